package policy

// Match reports whether s matches pattern, in the one glob syntax of midfs
// policy, used alike by a role's node_labels values and a token's aws_arn:
//
//   - any run of characters, including none
//     ?	exactly one character (a rune, not a byte)
//
// Every other character stands for itself: there are no character classes,
// no escapes and no regular expressions, so a pattern without * or ? must
// equal s. Match backtracks only to the last *, so it runs in
// O(len(pattern)*len(s)) whatever the pattern.
func Match(pattern, s string) bool {
	p, i := []rune(pattern), []rune(s)
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(i) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == i[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
