package store

// Batch returns first and whatever else waits in ch, up to limit in all,
// without waiting for more: the changes a backend commits together.
func Batch[T any](first T, ch <-chan T, limit int) []T {
	batch := []T{first}
	for len(batch) < limit {
		select {
		case v, ok := <-ch:
			if !ok {
				return batch
			}
			batch = append(batch, v)
		default:
			return batch
		}
	}
	return batch
}
