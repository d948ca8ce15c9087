package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Resources prints resources as a table (text), YAML documents or a
// JSON array.
func Resources(w io.Writer, kind string, res *policy.Resources, format string) error {
	switch format {
	case "json":
		items := res.Items()
		if items == nil {
			items = []any{}
		}
		b, err := json.MarshalIndent(items, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		for _, it := range res.Items() {
			if err := enc.Encode(it); err != nil {
				return err
			}
		}
		enc.Close()
		_, err := w.Write(buf.Bytes())
		return err
	}
	var t Table
	switch kind {
	case policy.KindRole:
		t.Header("Role", "Allowed to login as", "Node Labels", "Access to resources")
		for _, r := range res.Roles {
			t.Row(r.Metadata.Name, strings.Join(r.Spec.Allow.Logins, ","), formatSelector(r.Spec.Allow.NodeLabels), formatRules(r.Spec.Allow.Rules))
		}
	case policy.KindToken:
		t.Header("Token", "Type", "Bot", "Labels", "Expires", "State")
		for _, tk := range res.Tokens {
			expires := "never"
			if tk.Metadata.Expires != nil {
				expires = tk.Metadata.Expires.Format(time.RFC3339)
			}
			typ := tk.Spec.JoinMethod
			if slices.Contains(tk.Spec.Roles, policy.TokenRoleNode) {
				typ = "node" // one-time; "node iam" for an iam token of nodes
				if tk.Spec.JoinMethod != wire.JoinToken {
					typ += " " + tk.Spec.JoinMethod
				}
			}
			t.Row(tk.Metadata.Name, typ, tk.Spec.BotName, identity.FormatLabels(tk.Spec.Labels), expires, tokenState(tk))
		}
	case policy.KindBot:
		t.Header("Bot", "Roles", "Logins", "Generation", "Status")
		for _, b := range res.Bots {
			var logins []string
			for _, tr := range b.Spec.Traits {
				if tr.Name == "logins" {
					logins = tr.Values
				}
			}
			t.Row(b.Metadata.Name, strings.Join(b.Spec.Roles, ","), strings.Join(logins, ","), strconv.FormatUint(b.Status.Generation, 10), botState(b))
		}
	case policy.KindLock:
		return lockTable(res.Locks, time.Now()).Print(w)
	case policy.KindNode:
		t.Header("Node Name", "Address", "Labels", "Enforcing", "State")
		for _, n := range res.Nodes {
			t.Row(n.Metadata.Name, n.Spec.Addr, identity.FormatLabels(n.Metadata.Labels), nodeEnforcing(n), nodeState(n, time.Now()))
		}
	case policy.KindCA:
		return CAs(w, res.CAs)
	}
	return t.Print(w)
}

func tokenState(t policy.TokenResource) string {
	switch {
	case t.Status == nil:
		return "reusable"
	case t.Status.Used:
		return "used"
	case t.Metadata.Expires != nil && !time.Now().Before(*t.Metadata.Expires):
		return "expired"
	}
	return "unused"
}

// nodeEnforcing says whether the node checks logins itself: "yes" for a
// node that joined (midfs node start), "no" for one typed by an admin.
func nodeEnforcing(n policy.NodeResource) string {
	if n.Status != nil && n.Status.Enforcing {
		return "yes"
	}
	return "no"
}

// nodeState says whether bots see the node: always for a typed node,
// while it heartbeats for a joined one.
func nodeState(n policy.NodeResource, now time.Time) string {
	st := n.Status
	switch {
	case st == nil || !st.Enforcing:
		return "typed by an admin"
	case st.Online:
		return "online"
	case st.Expires == nil:
		return "joined, no heartbeat yet"
	}
	return "offline since " + st.Expires.Local().Format(time.DateTime) + " (" + now.Sub(*st.Expires).Round(time.Second).String() + " ago)"
}

func botState(b policy.BotResource) string {
	switch {
	case b.Status.Locked != "":
		return "locked: " + b.Status.Locked
	case b.Status.Token != "":
		return "joins with token " + b.Status.Token
	case b.Status.Generation == 0:
		return "not joined yet"
	}
	return "active"
}

// formatSelector prints node_labels as tctl does: <all nodes> for '*': '*'.
func formatSelector(sel policy.Labels) string {
	if vals, ok := sel["*"]; ok && len(sel) == 1 && len(vals) == 1 && vals[0] == "*" {
		return "<all nodes>"
	}
	keys := slices.Sorted(maps.Keys(sel))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strings.Join(sel[k], "|")
	}
	return strings.Join(parts, ",")
}

// formatRules prints rules as resource:verb,verb like tctl.
func formatRules(rules []policy.Rule) string {
	var parts []string
	for _, r := range rules {
		for _, res := range r.Resources {
			parts = append(parts, res+":"+strings.Join(r.Verbs, ","))
		}
	}
	return strings.Join(parts, ",")
}

// Nodes prints the table of `tsh ls`: Node Name, Address, Labels.
// `midfs get nodes` prints the same.
func Nodes(w io.Writer, nodes []identity.Node) error {
	var t Table
	t.Header("Node Name", "Address", "Labels")
	for _, n := range nodes {
		t.Row(n.Name, n.Addr, identity.FormatLabels(n.Labels))
	}
	return t.Print(w)
}
