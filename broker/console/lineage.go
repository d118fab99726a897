package console

import (
	"fmt"
	"slices"
	"time"

	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// graph is a lineage drawn as a tree: agents as nodes, grants as edges,
// laid out in columns by depth, rendered as SVG by the template (no
// script: the Content-Security-Policy allows none inline, and a drawing
// needs none).
type graph struct {
	Width, Height int
	Nodes         []gnode
	Edges         []gedge
}

type gnode struct {
	X, Y  int
	Agent string
	Label string
	Grant string // the grant that made this node (none for the root)
	// Delegator is who made Grant.
	Delegator string
	Roles     string
	Expires   string
	Revoked   bool
	Live      []*adminv1.LiveCredential
}

type gedge struct {
	X1, Y1, X2, Y2 int
	Revoked        bool
}

const (
	colWidth  = 300
	rowHeight = 90
	nodeW     = 250
	nodeH     = 64
	margin    = 20
)

// layout places root and the grants below it.
func layout(root string, l *adminv1.GetLineageResponse, now time.Time) graph {
	children := map[string][]*brokerv1.Grant{} // parent grant id ("" for root) → grants
	for _, g := range l.GetGrants() {
		children[g.GetParentGrantId()] = append(children[g.GetParentGrantId()], g)
	}
	creds := map[string][]*adminv1.LiveCredential{} // grant id ("" for the root's own) → credentials
	for _, c := range l.GetCredentials() {
		creds[c.GetGrantId()] = append(creds[c.GetGrantId()], c)
	}
	var g graph
	row := 0
	var walk func(agent string, grant *brokerv1.Grant, depth int) (y int)
	walk = func(agent string, grant *brokerv1.Grant, depth int) int {
		n := gnode{X: margin + depth*colWidth, Agent: agent, Label: short(agent)}
		key := ""
		if grant != nil {
			key = grant.GetId()
			n.Grant, n.Roles, n.Delegator = grant.GetId(), fmt.Sprint(grant.GetRoles()), grant.GetDelegator()
			n.Revoked = grant.GetRevokedAt() != nil || (grant.GetExpiresAt() != nil && !grant.GetExpiresAt().AsTime().After(now))
			if grant.GetExpiresAt() != nil {
				n.Expires = grant.GetExpiresAt().AsTime().UTC().Format("15:04:05Z")
			}
		}
		n.Live = creds[key]
		kids := children[key]
		slices.SortFunc(kids, func(a, b *brokerv1.Grant) int { return a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime()) })
		var ys []int
		for _, k := range kids {
			ys = append(ys, walk(k.GetDelegatee(), k, depth+1))
		}
		if len(ys) == 0 {
			n.Y = margin + row*rowHeight
			row++
		} else {
			n.Y = (ys[0] + ys[len(ys)-1]) / 2
		}
		for i, k := range kids {
			g.Edges = append(g.Edges, gedge{X1: n.X + nodeW, Y1: n.Y + nodeH/2, X2: n.X + colWidth, Y2: ys[i] + nodeH/2, Revoked: k.GetRevokedAt() != nil})
		}
		g.Nodes = append(g.Nodes, n)
		g.Width = max(g.Width, n.X+nodeW+margin)
		return n.Y
	}
	walk(root, nil, 0)
	g.Height = margin*2 + row*rowHeight
	return g
}

// labelLen is the most characters of an ID a node's label shows.
const labelLen = 34

// short is an agent's SPIFFE ID without its scheme and trust domain, cut
// to its end if long, for a node's label (its full ID is its title).
func short(id string) string {
	s := idPath(id)
	if r := []rune(s); len(r) > labelLen {
		return "…" + string(r[len(r)-labelLen+1:])
	}
	return s
}

func idPath(id string) string {
	const scheme = "spiffe://"
	if len(id) > len(scheme) && id[:len(scheme)] == scheme {
		rest := id[len(scheme):]
		for i := range len(rest) {
			if rest[i] == '/' {
				return rest[i:]
			}
		}
	}
	return id
}
