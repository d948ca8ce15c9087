package policy

import "time"

// KindCA is the kind of a CA resource, as Teleport's `tctl get cas` names
// it. CAs are made and rotated by the authority, never created from YAML.
const (
	KindCA    = "cert_authority"
	CAVersion = "v2"
)

// CAResource is one kind of CA (user, host or db) as `get cas` shows it:
// its CAs (two during a rotation) and where its rotation is.
type CAResource struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"` // name: the type
	Spec     CASpec   `json:"spec" yaml:"spec"`
}

// CASpec is a kind of CA's keys and rotation.
type CASpec struct {
	Type        string     `json:"type" yaml:"type"` // user, host or db
	ClusterName string     `json:"cluster_name" yaml:"cluster_name"`
	Keys        []CAKey    `json:"keys" yaml:"keys"` // oldest first
	Rotation    CARotation `json:"rotation" yaml:"rotation"`
}

// CAKey is one CA of a kind: public parts only.
type CAKey struct {
	ID      string    `json:"id" yaml:"id"`
	Pin     string    `json:"pin" yaml:"pin"`                     // sha256: of the certificate's SubjectPublicKeyInfo
	SSH     string    `json:"ssh,omitempty" yaml:"ssh,omitempty"` // authorized_keys line; none for db
	Signing bool      `json:"signing" yaml:"signing"`             // signs new certificates; the other is trusted only
	Expires time.Time `json:"expires" yaml:"expires"`             // of the CA certificate
}

// CARotation is where a kind's rotation is.
type CARotation struct {
	Phase       string     `json:"phase" yaml:"phase"`
	Mode        string     `json:"mode,omitempty" yaml:"mode,omitempty"` // auto or manual, during a rotation
	Started     *time.Time `json:"started,omitempty" yaml:"started,omitempty"`
	Changed     *time.Time `json:"phase_changed,omitempty" yaml:"phase_changed,omitempty"`
	GracePeriod string     `json:"grace_period,omitempty" yaml:"grace_period,omitempty"`
	// Next and NextAt: the phase an automatic rotation moves to, and when.
	Next        string     `json:"next_phase,omitempty" yaml:"next_phase,omitempty"`
	NextAt      *time.Time `json:"next_phase_at,omitempty" yaml:"next_phase_at,omitempty"`
	LastRotated *time.Time `json:"last_rotated,omitempty" yaml:"last_rotated,omitempty"`
}
