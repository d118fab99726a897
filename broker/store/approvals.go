package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store/kv"
)

// ApprovalStatus is where an approval request stands.
type ApprovalStatus string

// Approval states. Pending and Approved are open; the rest are final.
const (
	ApprovalPending   ApprovalStatus = "pending"
	ApprovalApproved  ApprovalStatus = "approved"
	ApprovalDenied    ApprovalStatus = "denied"
	ApprovalExpired   ApprovalStatus = "expired"
	ApprovalRedeemed  ApprovalStatus = "redeemed"
	ApprovalCancelled ApprovalStatus = "cancelled"
)

// Final reports whether nothing more can happen to a request in status st.
func (st ApprovalStatus) Final() bool { return st != ApprovalPending && st != ApprovalApproved }

// Approval is a credential request that waits for a human (Junior writes).
// Free text in it is redacted by the broker before it gets here.
type Approval struct {
	ID             string        `json:"id"`
	AgentID        string        `json:"agent_id"`
	Role           string        `json:"role"`
	Class          string        `json:"class"`
	Classification string        `json:"classification"`
	Level          authz.Level   `json:"level"`
	GrantID        string        `json:"grant_id,omitempty"`
	Chain          []string      `json:"chain,omitempty"`
	TTL            time.Duration `json:"ttl"`
	// RequestedTTL is the lifetime the request asked for (0: the most
	// allowed); a redemption must ask for the same. TTL is what it gets.
	RequestedTTL time.Duration `json:"requested_ttl,omitempty"`
	// Scopes are, for an access-token role, the scopes the token would
	// carry (the approver sees them); a redemption gets these or fewer.
	// Empty: every scope of the role.
	Scopes        []string       `json:"scopes,omitempty"`
	Purpose       string         `json:"purpose,omitempty"`
	Justification string         `json:"justification,omitempty"`
	Status        ApprovalStatus `json:"status"`
	CreatedAt     time.Time      `json:"created_at"`
	// ExpiresAt ends a pending request's wait and, once approved, the
	// window to redeem it.
	ExpiresAt  time.Time `json:"expires_at"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	Reason     string    `json:"reason,omitempty"`
	DecisionID string    `json:"decision_id"`
	// RedeemedDecisionID is the decision that issued the credential.
	RedeemedDecisionID string `json:"redeemed_decision_id,omitempty"`
	// Why explains the decision in the request's audit record; it is not
	// kept in the approval record.
	Why map[string]string `json:"-"`
}

// at returns a as seen at now: an open request past its expiry is expired.
func (a Approval) at(now time.Time) Approval {
	if !a.Status.Final() && !now.Before(a.ExpiresAt) {
		a.Status = ApprovalExpired
	}
	return a
}

// PutApproval records a new pending request and audits it.
func (s *Store) PutApproval(a Approval) error {
	err := s.group(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		b := tx.Bucket(bucketApprovals)
		if b.Get([]byte(a.ID)) != nil {
			return refuse(ErrExists, "approval %s", a.ID)
		}
		a.Status = ApprovalPending
		if err := putApproval(tx, a); err != nil {
			return err
		}
		detail := map[string]string{
			"decision": "pending", "role": a.Role, "class": a.Class, "classification": a.Classification, "level": a.Level.String(),
			"grant_id": a.GrantID, "chain": strings.Join(a.Chain, " > "), "decision_id": a.DecisionID,
			"purpose": a.Purpose, "justification": a.Justification, "expires_at": a.ExpiresAt.UTC().Format(time.RFC3339),
		}
		for k, v := range a.Why {
			if _, set := detail[k]; !set {
				detail[k] = v
			}
		}
		return s.appendAudit(tx, AuditRecord{Time: a.CreatedAt, Kind: "approval_requested", Actor: a.AgentID, Subject: a.ID, Detail: detail})
	})
	if err != nil {
		return fmt.Errorf("store: put approval: %w", err)
	}
	return nil
}

// GetApproval returns one request as it stands now.
func (s *Store) GetApproval(id string) (Approval, error) {
	var a Approval
	err := s.read(func(tx kv.Tx) error {
		var err error
		a, err = getApproval(tx, id)
		return err
	})
	return a.at(s.now()), err
}

// Approvals returns up to limit requests, newest first, in status st (""
// for any) and of agent ("" for any).
func (s *Store) Approvals(st ApprovalStatus, agent string, limit int) ([]Approval, error) {
	now := s.now()
	var out []Approval
	err := s.view(func(tx kv.Tx) error {
		return tx.Bucket(bucketApprovals).ForEach(func(k, v []byte) error {
			var a Approval
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("store: decode approval %s: %w", k, err)
			}
			a = a.at(now)
			if (st == "" || a.Status == st) && (agent == "" || a.AgentID == agent) {
				out = append(out, a)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Approval) int { return b.CreatedAt.Compare(a.CreatedAt) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, err
}

// DecideApproval approves or denies a pending request on behalf of
// approver. An approved request may be redeemed until now+redeemWithin.
// A request that is not pending (decided, expired) fails with ErrConflict.
func (s *Store) DecideApproval(id, approver string, approve bool, reason string, redeemWithin time.Duration) (Approval, error) {
	var a Approval
	err := s.group(func(tx kv.Tx) error {
		now := s.now().UTC()
		var err error
		if a, err = getApproval(tx, id); err != nil {
			return err
		}
		if st := a.at(now).Status; st != ApprovalPending {
			return refuse(ErrConflict, "approval %s is %s, not pending", id, st)
		}
		a.Status, a.DecidedBy, a.DecidedAt, a.Reason = ApprovalDenied, approver, now, reason
		kind, decision := "approval_denied", "deny"
		if approve {
			a.Status, a.ExpiresAt = ApprovalApproved, now.Add(redeemWithin)
			kind, decision = "approval_approved", "allow"
		}
		if err := putApproval(tx, a); err != nil {
			return err
		}
		return s.appendAudit(tx, AuditRecord{Time: now, Kind: kind, Actor: approver, Subject: id, Detail: map[string]string{
			"decision": decision, "agent": a.AgentID, "role": a.Role, "reason": reason, "decision_id": a.DecisionID,
		}})
	})
	if err != nil {
		return Approval{}, fmt.Errorf("store: decide approval: %w", err)
	}
	return a, nil
}

// ClaimApproval marks an approved request redeemed by decisionID, if it
// belongs to agent and is for role under grantID. Exactly one of any
// number of concurrent claims succeeds; the others fail with ErrConflict.
func (s *Store) ClaimApproval(id, agent, role, grantID, decisionID string) (Approval, error) {
	var a Approval
	err := s.group(func(tx kv.Tx) error {
		now := s.now().UTC()
		var err error
		if a, err = getApproval(tx, id); err != nil {
			return err
		}
		switch st := a.at(now).Status; {
		case a.AgentID != agent:
			return refuse(ErrNotFound, "approval %s", id)
		case a.Role != role || a.GrantID != grantID:
			return refuse(ErrConflict, "approval %s is for role %q under grant %q", id, a.Role, a.GrantID)
		case st == ApprovalPending:
			return refuse(ErrConflict, "approval %s still waits for an approver", id)
		case st != ApprovalApproved:
			return refuse(ErrConflict, "approval %s is %s", id, st)
		}
		a.Status, a.RedeemedDecisionID = ApprovalRedeemed, decisionID
		return putApproval(tx, a)
	})
	if err != nil {
		return Approval{}, fmt.Errorf("store: claim approval: %w", err)
	}
	return a, nil
}

// ReleaseApproval undoes a claim whose credential could not be issued, so
// the agent can try again before the approval expires.
func (s *Store) ReleaseApproval(id, decisionID string) error {
	err := s.group(func(tx kv.Tx) error {
		a, err := getApproval(tx, id)
		if err != nil {
			return err
		}
		if a.Status != ApprovalRedeemed || a.RedeemedDecisionID != decisionID {
			return nil
		}
		a.Status, a.RedeemedDecisionID = ApprovalApproved, ""
		return putApproval(tx, a)
	})
	if err != nil {
		return fmt.Errorf("store: release approval: %w", err)
	}
	return nil
}

func getApproval(tx kv.Tx, id string) (Approval, error) {
	var a Approval
	v := tx.Bucket(bucketApprovals).Get([]byte(id))
	if v == nil {
		return a, refuse(ErrNotFound, "approval %s", id)
	}
	if err := json.Unmarshal(v, &a); err != nil {
		return a, fmt.Errorf("store: decode approval %s: %w", id, err)
	}
	return a, nil
}

// putApproval writes a, and keeps it in the index of open requests by
// agent while it is open.
func putApproval(tx kv.Tx, a Approval) error {
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketApprovals).Put([]byte(a.ID), v); err != nil {
		return err
	}
	if a.Status.Final() {
		return tx.Bucket(bucketOpenApprovals).Delete(pair(a.AgentID, a.ID))
	}
	return tx.Bucket(bucketOpenApprovals).Put(pair(a.AgentID, a.ID), nil)
}

// cancelApprovals cancels, in tx, every open request of agents that match
// selects, and audits each. It reads only those agents' open requests
// (bucketOpenApprovals), whatever the number of requests ever made.
func (s *Store) cancelApprovals(tx kv.Tx, agents []string, match func(Approval) bool, actor, reason string, now time.Time) ([]string, error) {
	var open []Approval
	for _, agent := range agents {
		prefix := pair(agent, "")
		c := tx.Bucket(bucketOpenApprovals).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			a, err := getApproval(tx, string(k[len(prefix):]))
			if err != nil {
				return nil, err
			}
			if !a.at(now).Status.Final() && match(a) {
				open = append(open, a)
			}
		}
	}
	ids := make([]string, 0, len(open))
	for _, a := range open {
		a.Status, a.DecidedBy, a.DecidedAt, a.Reason = ApprovalCancelled, actor, now, reason
		if err := putApproval(tx, a); err != nil {
			return nil, err
		}
		if err := s.appendAudit(tx, AuditRecord{Time: now, Kind: "approval_cancelled", Actor: actor, Subject: a.ID, Detail: map[string]string{
			"decision": "deny", "agent": a.AgentID, "role": a.Role, "reason": reason, "decision_id": a.DecisionID,
		}}); err != nil {
			return nil, err
		}
		ids = append(ids, a.ID)
	}
	return ids, nil
}
