package store

import "time"

// Rotation is where the rotation of one kind of CA is. Between rotations
// the kind has one CA, Active, and Phase is "standby"; during one it has
// two: Active signs, the other is trusted too. The phases and the rules
// of moving between them are the authority's (package auth); the store
// keeps what it is given.
type Rotation struct {
	Kind        string
	Active      string        // ID of the CA that signs
	Phase       string        // standby, init, update_clients, update_servers or rollback
	Mode        string        // auto or manual during a rotation; "" in standby
	Started     time.Time     // when the rotation began; zero in standby
	Changed     time.Time     // when it entered Phase; zero in standby
	GracePeriod time.Duration // what an automatic rotation's phases are spread over; whole seconds
	LastRotated time.Time     // when the last rotation ended; zero if none did
}
