package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
)

// Anchor is a Vault token the broker holds, never hands out, and creates
// credentials and child anchors under, so that revoking it in Vault revokes
// everything below (docs/design.md §3). Only its accessor is stored.
type Anchor struct {
	Accessor string `json:"accessor"`
	// Node is the agent or grant it anchors (AgentNode, GrantNode).
	Node string `json:"node"`
	// Parent is the accessor of the anchor it is a child of; "" for a child
	// of the broker's own token.
	Parent    string    `json:"parent,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// Replica is the atfd replica that made it (Credential.Replica).
	Replica string `json:"replica,omitempty"`
}

// AgentNode and GrantNode name the nodes of the lineage tree anchors hang on.
func AgentNode(id string) string { return "agent:" + id }

// GrantNode names a grant's node; see AgentNode.
func GrantNode(id string) string { return "grant:" + id }

// RoleNode names the node of the anchor that holds one role's policies
// under node (an agent's or a grant's) and has that role's credentials
// below it: revoking it revokes exactly them.
func RoleNode(node, role string) string { return node + "#" + role }

// BaseNode is the agent or grant node a (role) node belongs to.
func BaseNode(node string) string {
	n, _, _ := strings.Cut(node, "#")
	return n
}

// Root names the top of a lineage: an agent or a grant.
type Root struct {
	AgentID string
	GrantID string
}

func (r Root) String() string {
	if r.GrantID != "" {
		return "grant " + r.GrantID
	}
	return "agent " + r.AgentID
}

// Revocation is what revoking a lineage committed.
type Revocation struct {
	// Grants newly revoked, parents before children.
	Grants []delegation.Grant
	// Credentials newly revoked, by agent: who must be told.
	Credentials map[string][]string
	// Queued is every accessor queued for revocation in Vault: anchors
	// first, parents before children, then credentials not under a queued
	// anchor.
	Queued []string
	// Approvals are the open approval requests cancelled.
	Approvals []string
	// Nodes are the role nodes whose anchors were revoked on their own
	// (not with their agent's or grant's): the broker makes them anew.
	Nodes []string

	// derived are the credentials revoked with their anchors, not yet
	// listed in Credentials (Settle).
	derived []derivedSet
	// orderBase is how many were queued before this revocation's part of a
	// larger one (crash recovery's chunks): its anchors' queue order
	// follows theirs.
	orderBase int
}

// derivedSet names credentials a revocation revoked through their
// anchors, without a write each: those of nodes (and of an agent root's
// own) under the anchors queued, live at the revocation's time.
type derivedSet struct {
	grants []string
	agent  string
	queued map[string]bool
	at     time.Time
}

// LineageRoot is the agent at the top of c's delegation chain: the root
// of the lineage its live-credential limit counts it in (the agent itself
// when it holds it on its own authority).
func (c Credential) LineageRoot() string {
	if len(c.Chain) > 0 {
		return c.Chain[0]
	}
	return c.AgentID
}

// CredentialCount is the number of credentials revoked.
func (r Revocation) CredentialCount() int {
	n := 0
	for _, acc := range r.Credentials {
		n += len(acc)
	}
	return n
}

// queueItem is a revocation queue entry, keyed by accessor.
type queueItem struct {
	Kind string `json:"kind"` // "anchor" or "credential"
	// Order keeps anchors before credentials and parents before children.
	Order int `json:"order"`
	// Queued is when the revocation was queued (absent in entries queued
	// before it was recorded): the age of the oldest is live evidence of
	// the queue draining (docs/conformance.md, R-3).
	Queued time.Time `json:"queued,omitzero"`
}

// PutGrant records a new grant with its grant_created audit record,
// checking in the same transaction that its delegator and delegatee are
// active, that no grant above it has been revoked (a grant racing a
// revocation is either recorded before it, and revoked by it, or refused),
// and that the delegator holds fewer than maxFanOut live grants under the
// same parent (ErrLimit). A refused grant leaves no record.
func (s *Store) PutGrant(g delegation.Grant, maxFanOut int) error {
	if g.ID == "" || strings.ContainsRune(g.ID, 0) {
		return refuse(ErrInvalid, "grant needs an ID without NUL")
	}
	v, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("store: encode grant: %w", err)
	}
	return s.update(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		for _, id := range []string{g.Delegator, g.Delegatee} {
			a, err := getAgent(tx, id)
			if err != nil {
				return err
			}
			if err := usable(tx, a); err != nil {
				return err
			}
		}
		if g.ParentID != "" {
			if _, err := liveChain(tx, g.ParentID, s.now()); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketGrants).Get([]byte(g.ID)) != nil {
			return refuse(ErrExists, "grant %s", g.ID)
		}
		out, err := given(tx, g.Delegator)
		if err != nil {
			return err
		}
		live := 0
		for _, o := range out {
			if o.ParentID == g.ParentID && o.RevokedAt.IsZero() && o.ExpiresAt.After(s.now()) {
				live++
			}
		}
		if live >= maxFanOut {
			return refuse(ErrLimit, "%s already holds out %d live grants here (limit %d)", g.Delegator, live, maxFanOut)
		}
		if err := tx.Bucket(bucketGrants).Put([]byte(g.ID), v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketGiven).Put(pair(g.Delegator, g.ID), nil); err != nil {
			return err
		}
		if err := tx.Bucket(bucketReceived).Put(pair(g.Delegatee, g.ID), nil); err != nil {
			return err
		}
		if err := tx.Bucket(bucketChildren).Put(pair(g.ParentID, g.ID), nil); err != nil {
			return err
		}
		detail := map[string]string{
			"delegatee": g.Delegatee, "roles": strings.Join(g.Roles, ","), "parent": g.ParentID, "expires_at": g.ExpiresAt.UTC().Format(time.RFC3339),
		}
		if len(g.Scopes) > 0 {
			// role=scope scope;role=scope
			var scopes []string
			for _, role := range slices.Sorted(maps.Keys(g.Scopes)) {
				scopes = append(scopes, role+"="+strings.Join(g.Scopes[role], " "))
			}
			detail["scopes"] = strings.Join(scopes, ";")
		}
		return s.appendAudit(tx, AuditRecord{Time: s.now().UTC(), Kind: "grant_created", Actor: g.Delegator, Subject: g.ID, Detail: detail})
	})
}

// GetGrant returns one grant.
func (s *Store) GetGrant(id string) (delegation.Grant, error) {
	var g delegation.Grant
	err := s.read(func(tx kv.Tx) error {
		var err error
		g, err = getGrant(tx, id)
		return err
	})
	return g, err
}

// Chain returns the grants from the root delegator's own authority down to
// id, root first. It does not check that they are live.
func (s *Store) Chain(id string) ([]delegation.Grant, error) {
	var chain []delegation.Grant
	err := s.read(func(tx kv.Tx) error {
		var err error
		chain, err = chainOf(tx, id)
		return err
	})
	return chain, err
}

// GrantsGivenBy returns the grants an agent gave, live or not.
func (s *Store) GrantsGivenBy(agentID string) ([]delegation.Grant, error) {
	var out []delegation.Grant
	err := s.view(func(tx kv.Tx) error {
		var err error
		out, err = given(tx, agentID)
		return err
	})
	return out, err
}

// AddAnchor records an anchor before the broker uses it, so that a
// revocation can always find it.
func (s *Store) AddAnchor(a Anchor) error {
	a.Replica = s.replica
	v, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("store: encode anchor: %w", err)
	}
	err = s.group(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		// An anchor for a node revoked meanwhile is refused, so that every
		// anchor is either recorded before a revocation (and revoked by it)
		// or never used.
		node := BaseNode(a.Node)
		if id, ok := strings.CutPrefix(node, "grant:"); ok {
			if _, err := liveChain(tx, id, s.now()); err != nil {
				return err
			}
		} else if ag, err := getAgent(tx, strings.TrimPrefix(node, "agent:")); err != nil {
			return err
		} else if err := usable(tx, ag); err != nil {
			return err
		}
		// Nor one whose parent was revoked meanwhile (a lineage revoked
		// while a role anchor was being made below its node's anchor).
		if a.Parent != "" {
			if p, err := getAnchor(tx, a.Parent); err == nil && !p.RevokedAt.IsZero() {
				return refuse(ErrRevoked, "anchor %s was revoked", a.Parent)
			}
		}
		if err := tx.Bucket(bucketAnchors).Put([]byte(a.Accessor), v); err != nil {
			return err
		}
		return tx.Bucket(bucketNodeAnchors).Put(pair(a.Node, a.Accessor), nil)
	})
	if err != nil {
		return fmt.Errorf("store: add anchor: %w", err)
	}
	return nil
}

// RecordCredential records an issued credential, with a credential_issued
// audit record carrying its provenance in the same transaction, if its agent
// is active and, for a credential under a grant, the grant chain and the
// anchor are live.
// Otherwise the credential is recorded as revoked, queued for revocation in
// Vault, and an error wrapping ErrDeregistered or ErrRevoked is returned:
// a credential racing a revocation is either recorded before it (and revoked
// by it) or refused. Concurrent calls share commits (see group).
//
// With c.Reserve set, the credential is counted in the live counts in the
// same transaction (as ReserveLive), and a limit it would break is a
// *LiveLimitError, with nothing recorded.
//
// It answers before the commit is made durable (groupEarly): a credential
// hangs on an anchor recorded, durably, before it was used, so a crash
// that loses the record is made safe by BeginRun revoking the crashed
// run's anchors, and a commit that fails calls Options.OnLost.
func (s *Store) RecordCredential(c Credential) error {
	c.Replica = s.replica
	var refused error
	var limited *LiveLimitError
	lost := func() {
		if s.onLost != nil {
			s.onLost(c)
		}
	}
	err := s.groupEarly(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		// group may run this more than once; what it sets is set on
		// every run.
		refused, limited = nil, nil
		rec := c
		reads := s.recordReads(c)
		if c.Reserve != nil {
			reads = append(reads, liveReads(s.replica, c.Reserve.Limits)...)
		}
		kv.Prefetch(tx, reads...)
		a, err := getAgent(tx, c.AgentID)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		refused = s.credentialRefusal(tx, c, a, now)
		if refused == nil && c.Reserve != nil {
			if rec.LiveReservation, limited, err = s.reserveLive(tx, c.Reserve.Limits, c.Reserve.Expires); err != nil || limited != nil {
				return err
			}
		}
		if err := putCredential(tx, rec, refused, now); err != nil {
			return err
		}
		if refused != nil && rec.LiveReservation != "" {
			if err := releaseLive(tx, rec.LiveReservation); err != nil {
				return err
			}
		}
		return s.appendAudit(tx, credentialAudit(rec, refused, now))
	}, lost)
	switch {
	case err != nil:
		return fmt.Errorf("store: record credential: %w", err)
	case limited != nil:
		return limited
	case refused != nil:
		return fmt.Errorf("%w; credential queued for revocation", refused)
	}
	return nil
}

// VoidCredential undoes the record of agent's credential accessor, which
// was recorded while Vault was asked for it and which Vault then did not
// issue (why says so, in the broker's words): the record and its index
// keys are deleted, its live-credential reservation released, and a
// credential_voided audit record says why, after the credential_issued
// one. Nothing is queued: there is nothing in Vault to revoke.
func (s *Store) VoidCredential(agent, accessor, why string) error {
	err := s.group(func(tx kv.Tx) error {
		key := credentialKey(agent, accessor)
		v := tx.Bucket(bucketCredentials).Get(key)
		if v == nil {
			return nil
		}
		var c Credential
		if err := json.Unmarshal(v, &c); err != nil {
			return err
		}
		if err := dropCredential(tx, key); err != nil {
			return err
		}
		if c.LiveReservation != "" {
			if err := releaseLive(tx, c.LiveReservation); err != nil {
				return err
			}
		}
		return s.appendAudit(tx, AuditRecord{Time: s.now().UTC(), Kind: "credential_voided", Actor: agent, Subject: accessor,
			Detail: map[string]string{"decision_id": c.DecisionID, "role": c.Role, "grant_id": c.GrantID, "reason": why}})
	})
	if err != nil {
		return fmt.Errorf("store: void credential: %w", err)
	}
	return nil
}

// recordReads are the keys RecordCredential reads: the agent, the global
// kill switch, the anchor and the grants of the chain by name; the newest
// policy version and audit record, from where their tails' walks start.
func (s *Store) recordReads(c Credential) []kv.Key {
	keys := append([]kv.Key{{Bucket: bucketAgents, Key: []byte(c.AgentID)}, {Bucket: bucketMeta, Key: keyGlobalKill}}, s.auditTail().at()...)
	if c.PolicyVersion != 0 {
		keys = append(keys, s.policyTail().at()...)
	}
	if c.Anchor != "" {
		keys = append(keys, kv.Key{Bucket: bucketAnchors, Key: []byte(c.Anchor)})
	}
	for _, g := range c.GrantIDs {
		keys = append(keys, kv.Key{Bucket: bucketGrants, Key: []byte(g)})
	}
	return keys
}

// credentialRefusal says why c, issued to a, may not be kept at now: its
// agent is not usable or changed since the decision, the policy is no
// longer at the version decided under, or the grant chain or the anchor
// it was issued under is no longer live. It is nil for a credential that
// may be kept.
func (s *Store) credentialRefusal(tx kv.Tx, c Credential, a Agent, now time.Time) error {
	if err := usable(tx, a); err != nil {
		return err
	}
	if c.AgentRevision != 0 && a.Revision != c.AgentRevision {
		// A demotion (or any change) committed after the decision: its
		// revocation of unbacked credentials could not see this one.
		return refuse(ErrConflict, "agent %s changed (revision %d, decided at %d) while the credential was issued; retry", c.AgentID, a.Revision, c.AgentRevision)
	}
	if c.PolicyVersion != 0 && s.currentPolicy(tx) != c.PolicyVersion {
		// A policy change committed after the decision: its revocation of
		// what the new version forbids could not see this one.
		return refuse(ErrConflict, "the segmentation policy changed (version %d, decided under %d) while the credential was issued; retry",
			s.currentPolicy(tx), c.PolicyVersion)
	}
	if c.GrantID != "" {
		chain, err := liveChain(tx, c.GrantID, now)
		if err != nil {
			return err
		}
		if chain[len(chain)-1].Delegatee != c.AgentID {
			return refuse(ErrRevoked, "grant %s was not given to %s", c.GrantID, c.AgentID)
		}
	}
	if c.Anchor != "" {
		if an, err := getAnchor(tx, c.Anchor); err != nil || !an.RevokedAt.IsZero() {
			return refuse(ErrRevoked, "anchor of %s", c.AgentID)
		}
	}
	return nil
}

// putCredential writes c in tx, indexed under its grant; a refused
// credential is written revoked at now and queued for revocation in Vault.
func putCredential(tx kv.Tx, c Credential, refused error, now time.Time) error {
	if refused != nil {
		c.RevokedAt = now
		// A refused batch token or access token never left the broker,
		// and cannot be revoked alone; it expires within its TTL.
		if c.inVault() {
			if err := enqueue(tx, c.Accessor, queueItem{Kind: "credential", Order: 1 << 20, Queued: now}); err != nil {
				return err
			}
		}
	}
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	key := credentialKey(c.AgentID, c.Accessor)
	if err := tx.Bucket(bucketCredentials).Put(key, v); err != nil {
		return err
	}
	if c.Anchor == "" {
		if err := tx.Bucket(bucketBare).Put(pair(credentialNode(c), c.Accessor), key); err != nil {
			return err
		}
	}
	if c.GrantID != "" {
		return tx.Bucket(bucketGrantCreds).Put(pair(c.GrantID, c.Accessor), key)
	}
	return nil
}

// credentialAudit is the audit record of recording c: credential_issued
// with its provenance and the decision's reasons, or credential_refused
// saying why.
func credentialAudit(c Credential, refused error, now time.Time) AuditRecord {
	kind := "credential_issued"
	detail := map[string]string{
		"decision": "allow", "role": c.Role, "level": c.Level.String(), "decision_id": c.DecisionID, "grant_id": c.GrantID,
		"chain": strings.Join(c.Chain, " > "), "grant_ids": strings.Join(c.GrantIDs, ","),
		"policies": strings.Join(c.Policies, ","), "expires_at": c.ExpiresAt.UTC().Format(time.RFC3339),
	}
	if c.LeaseID != "" {
		detail["lease_id"] = c.LeaseID
	}
	for k, v := range c.Why {
		if _, set := detail[k]; !set {
			detail[k] = v
		}
	}
	if refused != nil {
		kind = "credential_refused"
		detail["decision"], detail["refused"] = "deny", refused.Error()
	}
	return AuditRecord{Time: now, Kind: kind, Actor: c.AgentID, Subject: c.Accessor, Detail: detail}
}

// RevokeLineage revokes, in one transaction, every grant below root (an
// agent's grants, or a grant and its descendants), every live credential
// issued under them and, for an agent, its own live credentials; it queues
// the Vault anchors and credentials for revocation and writes one audit
// record per revoked grant. From the commit on, nothing in the lineage can
// be issued or used through the broker.
func (s *Store) RevokeLineage(root Root, actor, reason string) (Revocation, error) {
	if (root.AgentID == "") == (root.GrantID == "") {
		return Revocation{}, refuse(ErrInvalid, "a lineage root is one agent or one grant")
	}
	var rev Revocation
	err := s.update(func(tx kv.Tx) error {
		if root.AgentID != "" {
			if _, err := getAgent(tx, root.AgentID); err != nil {
				return err
			}
		}
		var err error
		rev, err = s.revokeLineage(tx, root, actor, reason, s.now().UTC())
		return err
	})
	return rev, s.settled(&rev, err)
}

// revokeLineage revokes root's lineage in tx at now: its grants, the open
// approvals in it, the anchors of its nodes and its live credentials.
func (s *Store) revokeLineage(tx kv.Tx, root Root, actor, reason string, now time.Time) (Revocation, error) {
	grants, err := lineageGrants(tx, root)
	if err != nil {
		return Revocation{}, err
	}
	rev := Revocation{Credentials: map[string][]string{}}
	if rev.Grants, err = s.revokeGrants(tx, grants, root, actor, reason, now); err != nil {
		return Revocation{}, err
	}
	// Requests waiting for a human in the lineage can no longer be granted.
	inLineage := map[string]bool{}
	for _, g := range grants {
		inLineage[g.ID] = true
	}
	agents := []string{root.AgentID}
	for _, g := range grants {
		agents = append(agents, g.Delegatee)
	}
	if rev.Approvals, err = s.cancelApprovals(tx, agents, func(a Approval) bool {
		return (root.AgentID != "" && a.AgentID == root.AgentID) || inLineage[a.GrantID]
	}, actor, reason, now); err != nil {
		return Revocation{}, err
	}
	var nodes []string
	if root.AgentID != "" {
		nodes = append(nodes, AgentNode(root.AgentID))
	}
	for _, g := range grants {
		nodes = append(nodes, GrantNode(g.ID))
	}
	queuedAnchors, err := revokeAnchors(tx, nodes, now, &rev)
	if err != nil {
		return Revocation{}, err
	}
	// Only credentials without an anchor are rewritten; the rest are
	// revoked with their anchors and listed after the commit (Settle):
	// the transaction costs the number of nodes, not of credentials.
	var keys [][]byte
	for _, node := range nodes {
		keys = append(keys, bareCredentialKeys(tx, node)...)
	}
	if root.AgentID != "" {
		// The agent's own credentials held under grants it received: those
		// grants' anchors are not the lineage's, so these go one by one.
		held, err := heldUnderReceived(tx, root.AgentID)
		if err != nil {
			return Revocation{}, err
		}
		keys = append(keys, held...)
	}
	if err := revokeCredentialKeys(tx, keys, queuedAnchors, now, &rev); err != nil {
		return Revocation{}, err
	}
	set := derivedSet{agent: root.AgentID, queued: queuedAnchors, at: now}
	for _, g := range grants {
		set.grants = append(set.grants, g.ID)
	}
	rev.derived = append(rev.derived, set)
	return rev, nil
}

// Settle lists in rev.Credentials the credentials rev revoked with their
// anchors, which the revocation's transaction did not read (see
// revokeLineage). It reads, outside any write, so call it once Vault has
// been told: what it lists is already refused by the broker and dead with
// its anchors. A settled Revocation is left as it is.
//
// If ahead is not nil, it is called with the number of credential records
// to read once their keys are known (an index walk), before they are read
// and decoded: revoke.Finish holds a large listing back until Vault has
// answered.
func (s *Store) Settle(rev *Revocation, ahead func(n int)) error {
	if len(rev.derived) == 0 {
		return nil
	}
	return s.view(func(tx kv.Tx) error { return settle(tx, rev, ahead) })
}

// settle is Settle in tx; a revocation's own transaction may settle it
// (CommitPolicy: its audit record counts every credential).
func settle(tx kv.Tx, rev *Revocation, ahead func(n int)) error {
	if len(rev.derived) == 0 {
		return nil
	}
	if rev.Credentials == nil {
		rev.Credentials = map[string][]string{}
	}
	keys := make([][][]byte, len(rev.derived))
	n := 0
	for i, set := range rev.derived {
		var err error
		if keys[i], err = lineageCredentialKeys(tx, Root{AgentID: set.agent}, set.grants); err != nil {
			return err
		}
		n += len(keys[i])
	}
	if ahead != nil {
		ahead(n)
	}
	creds := tx.Bucket(bucketCredentials)
	for i, set := range rev.derived {
		for _, k := range keys[i] {
			// Only the fields settling reads: a lineage may hold
			// 100,000 credentials.
			var cr struct {
				Accessor  string    `json:"accessor"`
				AgentID   string    `json:"agent_id"`
				ExpiresAt time.Time `json:"expires_at"`
				Anchor    string    `json:"anchor"`
				RevokedAt time.Time `json:"revoked_at"`
			}
			if err := json.Unmarshal(creds.Get(k), &cr); err != nil {
				return fmt.Errorf("store: decode credential: %w", err)
			}
			if set.queued[cr.Anchor] && cr.RevokedAt.IsZero() && cr.ExpiresAt.After(set.at) {
				rev.Credentials[cr.AgentID] = append(rev.Credentials[cr.AgentID], cr.Accessor)
			}
		}
	}
	rev.derived = nil
	return nil
}

// lineageGrants returns the grants below root, parents first: a grant and
// its descendants, or every grant an agent gave and their descendants.
func lineageGrants(tx kv.Tx, root Root) ([]delegation.Grant, error) {
	children := func(id string) ([]delegation.Grant, error) { return childrenOf(tx, id) }
	var grants []delegation.Grant
	var err error
	if root.GrantID != "" {
		g, gerr := getGrant(tx, root.GrantID)
		if gerr != nil {
			return nil, gerr
		}
		grants, err = delegation.LineageOfGrant(g, children)
	} else {
		grants, err = delegation.LineageOfAgent(root.AgentID, func(id string) ([]delegation.Grant, error) { return given(tx, id) }, children)
	}
	if err != nil {
		return nil, fmt.Errorf("store: lineage of %s: %w", root, err)
	}
	return grants, nil
}

// revokeGrants marks the grants not yet revoked as revoked at now, with a
// grant_revoked audit record each, and returns them.
func (s *Store) revokeGrants(tx kv.Tx, grants []delegation.Grant, root Root, actor, reason string, now time.Time) ([]delegation.Grant, error) {
	var revoked []delegation.Grant
	for _, g := range grants {
		if !g.RevokedAt.IsZero() {
			continue
		}
		g.RevokedAt = now
		if err := putGrant(tx, g); err != nil {
			return nil, err
		}
		revoked = append(revoked, g)
		if err := s.appendAudit(tx, AuditRecord{Time: now, Kind: "grant_revoked", Actor: actor, Subject: g.ID, Detail: map[string]string{
			"delegator": g.Delegator, "delegatee": g.Delegatee, "root": root.String(), "reason": reason,
		}}); err != nil {
			return nil, err
		}
	}
	return revoked, nil
}

// revokeAnchors marks the live anchors of nodes, and of their role nodes,
// as revoked at now and queues them in rev, in the order of nodes (parents
// first): revoking the first in Vault already kills what hangs below it,
// and the rest answer at once. It returns the accessors queued.
func revokeAnchors(tx kv.Tx, nodes []string, now time.Time, rev *Revocation) (map[string]bool, error) {
	queued := map[string]bool{}
	for _, node := range nodes {
		anchors, err := nodeAnchors(tx, node)
		if err != nil {
			return nil, err
		}
		roles, err := roleAnchors(tx, node)
		if err != nil {
			return nil, err
		}
		for _, an := range anchors {
			if err := revokeAnchor(tx, an, now, queued, rev); err != nil {
				return nil, err
			}
		}
		// A role anchor dies with its node's anchor in Vault: it is marked,
		// and queued only if that anchor is not.
		for _, an := range roles {
			if !queued[an.Parent] {
				if err := revokeAnchor(tx, an, now, queued, rev); err != nil {
					return nil, err
				}
				continue
			}
			if an.RevokedAt.IsZero() && an.ExpiresAt.After(now) {
				an.RevokedAt = now
				if err := putAnchor(tx, an); err != nil {
					return nil, err
				}
				queued[an.Accessor] = true // what hangs below it is gone too
			}
		}
	}
	return queued, nil
}

// revokeAnchor marks an revoked at now and queues it, if it is live.
func revokeAnchor(tx kv.Tx, an Anchor, now time.Time, queued map[string]bool, rev *Revocation) error {
	if !an.RevokedAt.IsZero() || !an.ExpiresAt.After(now) {
		return nil
	}
	an.RevokedAt = now
	if err := putAnchor(tx, an); err != nil {
		return err
	}
	if err := enqueue(tx, an.Accessor, queueItem{Kind: "anchor", Order: rev.orderBase + len(rev.Queued), Queued: now}); err != nil {
		return err
	}
	queued[an.Accessor] = true
	rev.Queued = append(rev.Queued, an.Accessor)
	return nil
}

// lineageCredentialKeys returns the keys of the credentials issued under
// grants and, for an agent root, of the agent's own.
func lineageCredentialKeys(tx kv.Tx, root Root, grants []string) ([][]byte, error) {
	var keys [][]byte
	for _, g := range grants {
		ks, err := grantCredentialKeys(tx, g)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	if root.AgentID != "" {
		prefix := credentialKey(root.AgentID, "")
		c := tx.Bucket(bucketCredentials).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
	}
	return keys, nil
}

// bareCredentialKeys returns the keys of node's credentials recorded
// without an anchor.
func bareCredentialKeys(tx kv.Tx, node string) [][]byte {
	var keys [][]byte
	prefix := pair(node, "")
	c := tx.Bucket(bucketBare).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		keys = append(keys, bytes.Clone(v))
	}
	return keys
}

// heldUnderReceived returns the keys of the credentials agent holds under
// grants it received.
func heldUnderReceived(tx kv.Tx, agent string) ([][]byte, error) {
	var keys [][]byte
	prefix := pair(agent, "")
	c := tx.Bucket(bucketReceived).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		id := string(k[len(prefix):])
		ks, err := grantCredentialKeys(tx, id)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// credentialNode is the node a credential was issued at: its grant's, or
// its agent's for its own authority.
func credentialNode(c Credential) string {
	if c.GrantID != "" {
		return GrantNode(c.GrantID)
	}
	return AgentNode(c.AgentID)
}

// revokeCredentialKeys revokes the live credentials at keys at now and adds
// them to rev. A credential under an anchor revoked in this transaction is
// not rewritten: its revocation is derived from its anchor's (readCredential),
// one record per revoked node, whatever the number of credentials. Others
// are marked and queued for revocation in Vault.
func revokeCredentialKeys(tx kv.Tx, keys [][]byte, queuedAnchors map[string]bool, now time.Time, rev *Revocation) error {
	creds := tx.Bucket(bucketCredentials)
	seen := map[string]time.Time{}
	for _, k := range keys {
		var cr Credential
		if err := json.Unmarshal(creds.Get(k), &cr); err != nil {
			return fmt.Errorf("store: decode credential: %w", err)
		}
		if !cr.RevokedAt.IsZero() || !cr.ExpiresAt.After(now) {
			continue
		}
		if !queuedAnchors[cr.Anchor] && !anchorRevokedAt(tx, cr.Anchor, seen).IsZero() {
			continue // died with its anchor earlier
		}
		rev.Credentials[cr.AgentID] = append(rev.Credentials[cr.AgentID], cr.Accessor)
		if queuedAnchors[cr.Anchor] {
			continue // revoked with its anchor, in the store and in Vault
		}
		cr.RevokedAt = now
		v, err := json.Marshal(cr)
		if err != nil {
			return err
		}
		if err := creds.Put(k, v); err != nil {
			return err
		}
		if err := queueCredential(tx, cr, queuedAnchors, now, rev); err != nil {
			return err
		}
	}
	return nil
}

// anchorRevokedAt is when the anchor with accessor acc was revoked in the
// store (zero: live, expired or unknown), remembered in seen.
func anchorRevokedAt(tx kv.Tx, acc string, seen map[string]time.Time) time.Time {
	if acc == "" {
		return time.Time{}
	}
	if at, ok := seen[acc]; ok {
		return at
	}
	an, err := getAnchor(tx, acc)
	if err != nil {
		an = Anchor{}
	}
	seen[acc] = an.RevokedAt
	return an.RevokedAt
}

// readCredential decodes a credential record; one revoked with its anchor
// (see revokeCredentialKeys) reads as revoked when the anchor was. seen
// caches anchors for the transaction.
func readCredential(tx kv.Tx, v []byte, seen map[string]time.Time) (Credential, error) {
	var cr Credential
	if err := json.Unmarshal(v, &cr); err != nil {
		return cr, fmt.Errorf("store: decode credential: %w", err)
	}
	if cr.RevokedAt.IsZero() {
		cr.RevokedAt = anchorRevokedAt(tx, cr.Anchor, seen)
	}
	return cr, nil
}

// queueCredential queues the revocation of credential cr in Vault, unless
// it dies with an anchor revoked already: a service token by its
// accessor, a batch token, which has none, with its anchor.
func queueCredential(tx kv.Tx, cr Credential, revokedAnchors map[string]bool, now time.Time, rev *Revocation) error {
	if revokedAnchors[cr.Anchor] || cr.Kind == KindJWT {
		return nil // dies with its anchor in Vault, or is no Vault token
	}
	if cr.Kind == KindBatch {
		an, err := getAnchor(tx, cr.Anchor)
		if errors.Is(err, ErrNotFound) {
			return nil // an anchor never recorded was never used
		}
		if err != nil {
			return err
		}
		// Once per anchor (revokedAnchors), so without a search: a node
		// listed twice (an anchor and its replacement) is dropped twice.
		if an.RevokedAt.IsZero() && an.ExpiresAt.After(now) {
			rev.Nodes = append(rev.Nodes, an.Node)
		}
		return revokeAnchor(tx, an, now, revokedAnchors, rev)
	}
	if err := enqueue(tx, cr.Accessor, queueItem{Kind: "credential", Order: 1 << 20, Queued: now}); err != nil {
		return err
	}
	rev.Queued = append(rev.Queued, cr.Accessor)
	return nil
}

// RevokeCredentials revokes the agent's live credentials that drop says
// should go (a demotion, a role taken away, its sessions), in one
// transaction, queues them for revocation in Vault and audits each. A
// batch credential goes with its anchor, and so do the agent's other
// credentials under that anchor (the same role): they are revoked too.
func (s *Store) RevokeCredentials(agentID, actor, reason string, drop func(Credential) bool) (Revocation, error) {
	rev := Revocation{Credentials: map[string][]string{}}
	err := s.update(func(tx kv.Tx) error {
		rev = Revocation{Credentials: map[string][]string{}}
		now := s.now().UTC()
		live, err := liveCredentialsOf(tx, agentID, now)
		if err != nil {
			return err
		}
		revokedAnchors := map[string]bool{}
		gone := map[string]bool{}
		for _, cr := range live {
			if !drop(cr) {
				continue
			}
			gone[cr.Accessor] = true
			if err := queueCredential(tx, cr, revokedAnchors, now, &rev); err != nil {
				return err
			}
		}
		for _, cr := range live {
			if !gone[cr.Accessor] && !revokedAnchors[cr.Anchor] {
				continue
			}
			if err := s.revokeCredential(tx, cr, actor, reason, now, &rev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Revocation{}, err
	}
	return rev, nil
}

// liveCredentialsOf are agent's credentials live at now. (Collected before
// any write: bbolt cursors must not see writes mid-iteration.)
func liveCredentialsOf(tx kv.Tx, agentID string, now time.Time) ([]Credential, error) {
	var live []Credential
	seen := map[string]time.Time{}
	prefix := credentialKey(agentID, "")
	c := tx.Bucket(bucketCredentials).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		cr, err := readCredential(tx, v, seen)
		if err != nil {
			return nil, err
		}
		if cr.RevokedAt.IsZero() && cr.ExpiresAt.After(now) {
			live = append(live, cr)
		}
	}
	return live, nil
}

// revokeCredential marks cr revoked at now, audits it and adds it to rev.
func (s *Store) revokeCredential(tx kv.Tx, cr Credential, actor, reason string, now time.Time, rev *Revocation) error {
	cr.RevokedAt = now
	v, err := json.Marshal(cr)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketCredentials).Put(credentialKey(cr.AgentID, cr.Accessor), v); err != nil {
		return err
	}
	if err := s.appendAudit(tx, AuditRecord{Time: now, Kind: "credential_revoked", Actor: actor, Subject: cr.Accessor, Detail: map[string]string{
		"agent": cr.AgentID, "role": cr.Role, "reason": reason,
	}}); err != nil {
		return err
	}
	rev.Credentials[cr.AgentID] = append(rev.Credentials[cr.AgentID], cr.Accessor)
	return nil
}

// Lineage returns the grants below root (parents first) and the credentials
// issued under them (and, for an agent, its own) that are neither revoked
// nor expired.
func (s *Store) Lineage(root Root) ([]delegation.Grant, []Credential, error) {
	var grants []delegation.Grant
	var live []Credential
	err := s.view(func(tx kv.Tx) error {
		if root.GrantID == "" {
			if _, err := getAgent(tx, root.AgentID); err != nil {
				return err
			}
		}
		var err error
		if grants, err = lineageGrants(tx, root); err != nil {
			return err
		}
		now := s.now()
		seen := map[string]time.Time{}
		add := func(v []byte) error {
			cr, err := readCredential(tx, v, seen)
			if err != nil {
				return err
			}
			if cr.RevokedAt.IsZero() && cr.ExpiresAt.After(now) {
				live = append(live, cr)
			}
			return nil
		}
		creds := tx.Bucket(bucketCredentials)
		if root.AgentID != "" {
			prefix := credentialKey(root.AgentID, "")
			c := creds.Cursor()
			for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				if err := add(v); err != nil {
					return err
				}
			}
		}
		for _, g := range grants {
			keys, err := grantCredentialKeys(tx, g.ID)
			if err != nil {
				return err
			}
			for _, k := range keys {
				if err := add(creds.Get(k)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return grants, live, err
}

// QueueState is the revocation queue's length and when its oldest entry
// was queued (zero when it is empty or its entries predate the record).
type QueueState struct {
	Pending int
	Oldest  time.Time
}

// RevocationQueue reads the revocation queue's length and the age of its
// oldest entry.
func (s *Store) RevocationQueue() (QueueState, error) {
	var q QueueState
	err := s.view(func(tx kv.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(_, v []byte) error {
			var it queueItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("store: decode queue entry: %w", err)
			}
			q.Pending++
			if !it.Queued.IsZero() && (q.Oldest.IsZero() || it.Queued.Before(q.Oldest)) {
				q.Oldest = it.Queued
			}
			return nil
		})
	})
	return q, err
}

// PendingRevocations returns the accessors whose revocation Vault has not
// confirmed yet: anchors first (parents before children), then credentials.
func (s *Store) PendingRevocations() ([]string, error) {
	type entry struct {
		acc   string
		order int
	}
	var es []entry
	err := s.view(func(tx kv.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			var it queueItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("store: decode queue entry: %w", err)
			}
			es = append(es, entry{string(k), it.Order})
			return nil
		})
	})
	slices.SortStableFunc(es, func(a, b entry) int { return a.order - b.order })
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.acc
	}
	return out, err
}

// CompleteRevocation records that Vault confirmed a queued revocation.
func (s *Store) CompleteRevocation(accessor string) error {
	// Answered before its fsync: a completion a crash loses leaves the
	// entry queued, and the drain finds it already revoked in Vault.
	err := s.groupEarly(func(tx kv.Tx) error {
		return tx.Bucket(bucketRevocations).Delete([]byte(accessor))
	}, func() {})
	if err != nil {
		return fmt.Errorf("store: complete revocation: %w", err)
	}
	return nil
}

// liveChain returns the chain down to grant id, checking that every grant
// in it is neither revoked nor expired at now.
func liveChain(tx kv.Tx, id string, now time.Time) ([]delegation.Grant, error) {
	chain, err := chainOf(tx, id)
	if err != nil {
		return nil, err
	}
	for _, g := range chain {
		switch {
		case !g.RevokedAt.IsZero():
			return nil, refuse(ErrRevoked, "grant %s", g.ID)
		case !g.ExpiresAt.After(now):
			return nil, refuse(ErrRevoked, "grant %s expired", g.ID)
		}
	}
	return chain, nil
}

func chainOf(tx kv.Tx, id string) ([]delegation.Grant, error) {
	var chain []delegation.Grant
	seen := map[string]bool{}
	for id != "" {
		if seen[id] {
			return nil, refuse(ErrInvalid, "grant chain loops at %s", id)
		}
		seen[id] = true
		g, err := getGrant(tx, id)
		if err != nil {
			return nil, err
		}
		chain = append(chain, g)
		id = g.ParentID
	}
	slices.Reverse(chain)
	return chain, nil
}

func getGrant(tx kv.Tx, id string) (delegation.Grant, error) {
	var g delegation.Grant
	v := tx.Bucket(bucketGrants).Get([]byte(id))
	if v == nil {
		return g, refuse(ErrNotFound, "grant %s", id)
	}
	if err := json.Unmarshal(v, &g); err != nil {
		return g, fmt.Errorf("store: decode grant %s: %w", id, err)
	}
	return g, nil
}

func putGrant(tx kv.Tx, g delegation.Grant) error {
	v, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("store: encode grant: %w", err)
	}
	return tx.Bucket(bucketGrants).Put([]byte(g.ID), v)
}

// grantsUnder reads the grant ids indexed under prefix in bucket b.
func grantsUnder(tx kv.Tx, b []byte, owner string) ([]delegation.Grant, error) {
	var out []delegation.Grant
	prefix := pair(owner, "")
	c := tx.Bucket(b).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		g, err := getGrant(tx, string(k[len(prefix):]))
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

func childrenOf(tx kv.Tx, id string) ([]delegation.Grant, error) {
	return grantsUnder(tx, bucketChildren, id)
}

func given(tx kv.Tx, agentID string) ([]delegation.Grant, error) {
	return grantsUnder(tx, bucketGiven, agentID)
}

func grantCredentialKeys(tx kv.Tx, grantID string) ([][]byte, error) {
	var out [][]byte
	prefix := pair(grantID, "")
	c := tx.Bucket(bucketGrantCreds).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		out = append(out, bytes.Clone(v))
	}
	return out, nil
}

func getAnchor(tx kv.Tx, accessor string) (Anchor, error) {
	var a Anchor
	v := tx.Bucket(bucketAnchors).Get([]byte(accessor))
	if v == nil {
		return a, refuse(ErrNotFound, "anchor")
	}
	if err := json.Unmarshal(v, &a); err != nil {
		return a, fmt.Errorf("store: decode anchor: %w", err)
	}
	return a, nil
}

func putAnchor(tx kv.Tx, a Anchor) error {
	v, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("store: encode anchor: %w", err)
	}
	return tx.Bucket(bucketAnchors).Put([]byte(a.Accessor), v)
}

func nodeAnchors(tx kv.Tx, node string) ([]Anchor, error) {
	return anchorsUnder(tx, pair(node, ""))
}

// roleAnchors are the anchors of node's role nodes (RoleNode).
func roleAnchors(tx kv.Tx, node string) ([]Anchor, error) {
	return anchorsUnder(tx, []byte(node+"#"))
}

// anchorsUnder are the anchors whose node_anchors key (node, NUL,
// accessor) begins with prefix.
func anchorsUnder(tx kv.Tx, prefix []byte) ([]Anchor, error) {
	var out []Anchor
	c := tx.Bucket(bucketNodeAnchors).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			continue
		}
		a, err := getAnchor(tx, string(k[i+1:]))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func enqueue(tx kv.Tx, accessor string, it queueItem) error {
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketRevocations).Put([]byte(accessor), v); err != nil {
		return fmt.Errorf("store: queue revocation: %w", err)
	}
	return nil
}

// pair is "<a>\x00<b>": SPIFFE IDs, grant ids and accessors never hold NUL,
// so a prefix scan for one owner never reaches another.
func pair(a, b string) []byte { return append(append([]byte(a), 0), b...) }
