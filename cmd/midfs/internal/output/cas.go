package output

import (
	"io"
	"time"

	"github.com/midfs/midfs/auth/policy"
)

// CAs prints each kind of CA with its phase and keys, one row per key
// (two during a rotation): what `get cas` and `auth rotate` show.
func CAs(w io.Writer, cas []policy.CAResource) error {
	var t Table
	t.Header("Type", "Phase", "Mode", "CA pin", "Signing", "Next phase")
	for _, ca := range cas {
		r := ca.Spec.Rotation
		next := ""
		if r.NextAt != nil {
			next = r.Next + " at " + r.NextAt.Format(time.RFC3339)
		}
		for i, k := range ca.Spec.Keys {
			signing := "no"
			if k.Signing {
				signing = "yes"
			}
			if i == 0 {
				t.Row(ca.Spec.Type, r.Phase, r.Mode, k.Pin, signing, next)
			} else {
				t.Row("", "", "", k.Pin, signing, "")
			}
		}
	}
	return t.Print(w)
}

// CAPhase is one kind's rotation on one line, for `status`: the phase,
// and during a rotation its mode and what comes next.
func CAPhase(ca policy.CAResource) string {
	r := ca.Spec.Rotation
	s := r.Phase
	switch {
	case r.NextAt != nil:
		s += " (" + r.Mode + ", " + r.Next + " at " + r.NextAt.Format(time.RFC3339) + ")"
	case r.Mode != "":
		s += " (" + r.Mode + ")"
	}
	return s
}
