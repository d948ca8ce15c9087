package output

import (
	"fmt"
	"io"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/wire"
)

// LockCreated prints what `midfs lock` did.
func LockCreated(w io.Writer, l *wire.Lock) {
	until := "until removed"
	if !l.Expires.IsZero() {
		until = "until " + l.Expires.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "Created lock %s: bot %s is refused %s.\n", l.ID, l.Bot, until)
	fmt.Fprintf(w, "Enforcing nodes refuse it once they fetch the lock. Remove it with: midfs rm locks/%s\n", l.ID)
}

// lockTable is the text of `get locks`: ID, Bot, Message, Created, Expires
// and whether it is in force at now.
func lockTable(locks []policy.LockResource, now time.Time) *Table {
	var t Table
	t.Header("ID", "Bot", "Message", "Created", "Expires", "State")
	for _, l := range locks {
		expires, state := "never", "in force"
		if e := l.Spec.Expires; e != nil {
			expires = e.Format(time.RFC3339)
			if !now.Before(*e) {
				state = "expired"
			}
		}
		t.Row(l.Metadata.Name, l.Spec.Target.Bot, l.Spec.Message, l.Spec.CreatedAt.Format(time.RFC3339), expires, state)
	}
	return &t
}
