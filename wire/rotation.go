package wire

// Phases of a CA rotation, as Teleport names them. A kind of CA (user,
// host, db) is in standby between rotations, with one CA; during one it
// moves init → update_clients → update_servers → standby, or from any of
// the first three to rollback and then standby, with two CAs trusted.
const (
	// PhaseStandby: no rotation; one CA, trusted and signing.
	PhaseStandby = "standby"
	// PhaseInit: a new CA is trusted everywhere but signs nothing yet.
	PhaseInit = "init"
	// PhaseUpdateClients: the new CA signs what clients present (bot,
	// node and output identities); servers still present the old CA's.
	PhaseUpdateClients = "update_clients"
	// PhaseUpdateServers: servers switch too (nodes' host certificates,
	// the authority's HTTPS certificate); the old CA is still trusted.
	PhaseUpdateServers = "update_servers"
	// PhaseRollback: the old CA signs again, the new one is still
	// trusted until standby drops it.
	PhaseRollback = "rollback"
)

// Rotation modes: who moves a rotation on.
const (
	RotationAuto   = "auto"   // the authority, over the grace period
	RotationManual = "manual" // the administrator, one phase at a time
)

// CASet is every CA a cluster trusts, by kind, and where each kind's
// rotation is. Agents get it with every node list (NodeList.CAs) and
// nodes with every heartbeat, so that a phase change reaches them within
// one poll. In each kind exactly one CA has Signing set: the one whose
// certificates a client or server gets from now on.
type CASet struct {
	// Version moves with every change of the CAs, and is the same on
	// every replica: an agent keeps the newest set it was sent.
	Version  uint64            `json:"version"`
	User     []CA              `json:"user"`
	Host     []CA              `json:"host"`
	Database []CA              `json:"db"`
	Phases   map[string]string `json:"phases"` // kind (user, host, db) → phase
}
