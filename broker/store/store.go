package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store/kv"
	"github.com/agentictrust/atf/delegation"
)

// Errors returned by the store; test with errors.Is.
var (
	ErrNotFound     = errors.New("store: not found")
	ErrExists       = errors.New("store: already exists")
	ErrConflict     = errors.New("store: revision conflict")
	ErrDeregistered = errors.New("store: agent is deregistered")
	ErrLocked       = errors.New("store: file is locked by another process")
	ErrInvalid      = errors.New("store: invalid record")
	ErrRevoked      = errors.New("store: revoked")
	ErrLimit        = errors.New("store: limit reached")
	ErrKilled       = errors.New("store: stopped by the kill switch")
	// ErrUnavailable: the store shared in etcd did not answer within
	// store.etcd.timeout (unreachable, no quorum, or a transaction that
	// kept conflicting); nothing was written.
	ErrUnavailable = errors.New("store: the shared store (etcd) did not answer in time")
	// ErrBusy: a transaction on the store shared in etcd kept conflicting
	// with concurrent writes (other replicas') until store.etcd.timeout;
	// nothing was written.
	ErrBusy = errors.New("store: the shared store (etcd) stayed busy with concurrent writes")
	// ErrFull: the file reached its size limit, less the room kept for
	// revocations; nothing new is recorded until space is made.
	ErrFull = errors.New("store: full")
)

var (
	bucketAgents      = []byte("agents")
	bucketHistory     = []byte("agent_history")
	bucketCredentials = []byte("credentials")
	bucketRevocations = []byte("revocations")
	bucketGrants      = []byte("grants")
	bucketChildren    = []byte("grant_children")
	bucketGiven       = []byte("grants_by_delegator")
	bucketGrantCreds  = []byte("grant_credentials")
	// bucketBare indexes the credentials recorded without an anchor, by
	// node: pair(node, accessor) -> credential key. A lineage revocation
	// rewrites these one by one; those under anchors die with them.
	bucketBare = []byte("bare_credentials")
	// bucketReceived indexes grants by delegatee: pair(delegatee, id).
	bucketReceived = []byte("grants_by_delegatee")
	// bucketOpenApprovals indexes the requests not yet final by agent:
	// pair(agent, id).
	bucketOpenApprovals = []byte("open_approvals")
	bucketAnchors       = []byte("anchors")
	bucketNodeAnchors   = []byte("node_anchors")
	bucketAudit         = []byte("audit")
	bucketPolicies      = []byte("policies")
	bucketApprovals     = []byte("approvals")
	bucketMeta          = []byte("meta")

	allBuckets = [][]byte{bucketAgents, bucketHistory, bucketCredentials, bucketRevocations,
		bucketGrants, bucketChildren, bucketGiven, bucketGrantCreds, bucketBare, bucketReceived, bucketOpenApprovals, bucketAnchors, bucketNodeAnchors, bucketAudit,
		bucketPolicies, bucketApprovals, bucketMeta, bucketOutcomes, bucketEvidence, bucketSignOffs, bucketIncidents,
		bucketLiveCounts, bucketLive, bucketLiveExpiry, bucketBaselines, bucketEndedSessions}
)

// Status is an agent's standing in the registry.
type Status int

// Agent statuses.
const (
	Active Status = iota + 1
	Deregistered
)

func (s Status) String() string {
	switch s {
	case Active:
		return "active"
	case Deregistered:
		return "deregistered"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Agent is one registered agent.
type Agent struct {
	ID           string      `json:"id"`
	Owner        string      `json:"owner"`
	Purpose      string      `json:"purpose"`
	Roles        []string    `json:"roles"`
	Level        authz.Level `json:"level"`
	Status       Status      `json:"status"`
	Version      string      `json:"version,omitempty"`
	ConfigDigest string      `json:"config_digest,omitempty"`
	CreatedAt    time.Time   `json:"created_at"`
	UpdatedAt    time.Time   `json:"updated_at"`
	UpdatedBy    string      `json:"updated_by"`
	Revision     uint64      `json:"revision"`
	// Kill is set while the kill switch holds the agent.
	Kill *Kill `json:"kill,omitempty"`
	// LevelSince is when the agent reached its level.
	LevelSince time.Time `json:"level_since"`
}

// Usable reports whether the agent may get or give anything: registered,
// active and not stopped by the kill switch.
func (a Agent) Usable() bool { return a.Status == Active && a.Kill == nil }

// Subject is the agent as the gate (authz) judges it.
func (a Agent) Subject() *authz.Agent {
	return &authz.Agent{ID: a.ID, Level: a.Level, Active: a.Status == Active, Killed: a.Kill != nil, Roles: a.Roles}
}

// Kill records who stopped an agent, when and why.
type Kill struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	// Lineage is set when the agent was stopped because an agent above it
	// in a delegation lineage was.
	Lineage string `json:"lineage,omitempty"`
}

// Change actions recorded in an agent's history.
const (
	ActionRegister   = "register"
	ActionUpdate     = "update"
	ActionDeregister = "deregister"
	ActionKill       = "kill"
	ActionRelease    = "release"
	ActionPromote    = "promote"
	ActionDemote     = "demote"
	ActionRollback   = "rollback"
	// ActionMigrate places an agent that earned its level elsewhere above
	// the level it was registered at, on the sign-offs a promotion needs.
	ActionMigrate = "migrate"
)

// AgentChange is one recorded change to an agent.
type AgentChange struct {
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Reason   string    `json:"reason,omitempty"`
	// Agent is the record as it was after the change.
	Agent Agent `json:"agent"`
}

// Credential records one issued Vault token, by accessor.
type Credential struct {
	// Accessor is the token's accessor; for a batch token, which has none,
	// an id of the broker's (see Kind).
	Accessor string `json:"accessor"`
	// Kind is "batch" for a batch token, which dies only with its anchor;
	// "jwt" for an OAuth access token, which has no Vault token; "" for a
	// service token, revocable by its accessor.
	Kind       string      `json:"kind,omitempty"`
	AgentID    string      `json:"agent_id"`
	Role       string      `json:"role"`
	Level      authz.Level `json:"level"`
	Policies   []string    `json:"policies"`
	DecisionID string      `json:"decision_id"`
	IssuedAt   time.Time   `json:"issued_at"`
	ExpiresAt  time.Time   `json:"expires_at"`
	// GrantID is the grant it was issued under; "" for the agent's own
	// authority.
	GrantID string `json:"grant_id,omitempty"`
	// Anchor is the accessor of the Vault anchor token it is a child of.
	Anchor string `json:"anchor,omitempty"`
	// Replica is the atfd replica that issued it, for a store in etcd
	// (EtcdOptions.Replica); its crash recovery revokes only its own.
	Replica string `json:"replica,omitempty"`
	// LiveReservation is its place in the live counts (ReserveLive), with
	// a store several replicas share: its revocation releases it
	// (ReleaseLive), and a refused record gives it back at once.
	LiveReservation string `json:"live,omitempty"`
	// Chain is the provenance: the SPIFFE IDs from the root delegator down
	// to the holder, and the grants between them, root first.
	Chain    []string `json:"chain,omitempty"`
	GrantIDs []string `json:"grant_ids,omitempty"`
	// RevokedAt is when the broker revoked it; the Vault side may still be
	// queued (PendingRevocations).
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// AgentRevision is the revision of the agent's record the decision
	// read; recording refuses the credential if the record changed since.
	AgentRevision uint64 `json:"agent_revision,omitempty"`
	// PolicyVersion is the version of the segmentation policy the decision
	// read; recording refuses the credential if a newer one was committed
	// since (its revocation of what it forbids could not see this one).
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	// ApprovalID is the human approval it was issued on, if any.
	ApprovalID string `json:"approval_id,omitempty"`
	// LeaseID is the Vault lease of the dynamic secret read with the
	// token, for a role that names one: like an accessor, it names the
	// lease without giving the secret, which is never stored.
	LeaseID string `json:"lease_id,omitempty"`
	// Why explains the decision in the issuance's audit record; it is not
	// kept in the credential record.
	Why map[string]string `json:"-"`
	// Reserve, if set, has RecordCredential count the credential in the
	// live counts in its own transaction; LiveReservation is then set
	// there. Not kept in the record.
	Reserve *LiveReserve `json:"-"`
}

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock; default 1 s.
	LockTimeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnAudit, if set, is called after every commit that appended audit
	// records (e.g. to wake a streamer). It must not block.
	OnAudit func()
	// MaxSize bounds the file, in bytes; 0: the disk is the limit. Writes
	// that record something new (credentials, grants, agents, approvals,
	// audit records of decisions, ...) fail with ErrFull once less than
	// a tenth of it (at least 1 MiB, at most 64 MiB) is left, so that
	// revocations, kills and deregistrations, which use that room, still
	// commit.
	MaxSize int64
	// AuditDir, if set, is where audit records go once committed: the
	// store keeps them only until ShipAudit moves them to segment files
	// there (see segments.go), so the file stays the size of the live
	// state. Empty: the trail stays in the store.
	AuditDir string
	// AuditSegmentSize is the size at which a segment is sealed; default
	// 64 MiB.
	AuditSegmentSize int64
	// OnLost, if set, is called with a credential whose recording was
	// answered as done but whose commit then failed (RecordCredential):
	// the broker must revoke it in Vault (its anchor, for a batch token).
	OnLost func(Credential)
}

// Store is the broker's state. It is safe for concurrent use.
type Store struct {
	*core
	// req goes into every audit record written through this handle
	// (ForRequest).
	req Request
	// settleLater leaves listing a revocation's credentials to Settle
	// (SettleLater).
	settleLater bool
}

// core is the store that every handle shares.
type core struct {
	// db is the bbolt file; nil for a store in etcd, whose engine is etcd
	// (OpenEtcd).
	db      *bolt.DB
	etcd    *kv.Etcd
	timeout time.Duration // of one etcd transaction
	replica string        // EtcdOptions.Replica; "" for a bbolt file
	now     func() time.Time
	onAudit func()
	onLost  func(Credential)

	maxSize int64 // Options.MaxSize
	reserve int64 // kept for revocations
	reqs    chan *commitReq
	quit    chan struct{}
	stopped chan struct{}
	closeMu sync.RWMutex
	closed  bool

	// early is closed when the commit of writes answered before it
	// (groupEarly) is done; nil when there is none in flight.
	earlyMu sync.Mutex
	early   chan struct{}
	// auditDir and segmentSize are Options.AuditDir, AuditSegmentSize;
	// segments is the open segment, ShipAudit's under shipMu. auditMu
	// keeps readers of the trail (eachAudit) and its trimming apart.
	auditDir    string
	segmentSize int64
	shipMu      sync.Mutex
	segments    segmentWriter
	auditMu     sync.RWMutex
	// auditHint and policyHint are where the walks to the newest audit
	// record and policy version start (auditTail, policyTail).
	auditHint, policyHint atomic.Uint64
	// commits and rollbacks count the committer's transactions.
	commits, rollbacks atomic.Uint64
	// commitFault, set only by tests, fails a group's commit and an
	// audit trim.
	commitFault func() error
}

// Open opens or creates the store file at path (mode 0600). It refuses a
// damaged file with a *DamagedError.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if opts.MaxSize < 0 {
		return nil, fmt.Errorf("store: negative size limit %d", opts.MaxSize)
	}
	db, err := openDB(path, opts.LockTimeout, opts.MaxSize)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return fillIndexes(kv.Bolt(tx))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	s := &Store{core: &core{db: db, now: opts.Now, onAudit: opts.OnAudit, onLost: opts.OnLost, maxSize: opts.MaxSize, reserve: reserveFor(opts.MaxSize), reqs: make(chan *commitReq, maxGroup), quit: make(chan struct{}), stopped: make(chan struct{})}}
	if err := s.loadTails(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	if opts.AuditDir != "" {
		s.auditDir, s.segmentSize = opts.AuditDir, opts.AuditSegmentSize
		if s.segmentSize <= 0 {
			s.segmentSize = defaultSegmentSize
		}
		if err := s.recoverSegments(); err != nil {
			db.Close()
			return nil, err
		}
	}
	go s.committer()
	return s, nil
}

// Request is what a request's audit records say about it (ForRequest).
type Request struct {
	// ID is the broker's own id of the request.
	ID string
	// ClientID is the id the caller chose (x-request-id), if any.
	ClientID string
	// ActorName is the display name of a person acting (signed in through
	// OpenID Connect), if any: the records' actor is their issuer and
	// subject, which say who; the name says it to a reader.
	ActorName string
}

// ForRequest returns a handle on the same store whose audit records carry
// r.ID, the broker's own id of the request, in their detail as
// "request_id", so that every record a request causes can be found from
// the request id in atfd's log and the caller's answer; r.ClientID, the
// id the caller chose (x-request-id), if any, apart as
// "client_request_id": a caller never chooses the id the trail knows its
// request by (docs/security.md); and r.ActorName as "actor_name". An empty
// r.ID returns s.
func (s *Store) ForRequest(r Request) *Store {
	if r.ID == "" {
		return s
	}
	return &Store{core: s.core, req: r, settleLater: s.settleLater}
}

// SettleLater returns a handle on the same store whose revocations
// (RevokeLineage, DeregisterAgent, KillAgent, KillAll) return as soon as
// they committed, before listing in Revocation.Credentials the credentials
// that died with their anchors: the caller tells Vault first, then calls
// Settle. Through other handles they return settled.
func (s *Store) SettleLater() *Store {
	return &Store{core: s.core, req: s.req, settleLater: true}
}

// settled settles rev unless this handle leaves it to the caller.
func (s *Store) settled(rev *Revocation, err error) error {
	if err != nil || s.settleLater {
		return err
	}
	return s.Settle(rev, nil)
}

// Close waits for the write being committed, refuses later writes and
// releases the file.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return s.closeDB()
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.quit)
	<-s.stopped
	s.shipMu.Lock()
	s.segments.close()
	s.shipMu.Unlock()
	// Writes queued but not taken by the committer are refused.
	for {
		select {
		case r := <-s.reqs:
			r.done <- ErrClosed
		default:
			return s.closeDB()
		}
	}
}

// RegisterAgent adds a new agent, recorded as made by actor, with its
// agent_registered audit record in the same transaction. It sets the
// status, timestamps and revision.
func (s *Store) RegisterAgent(a Agent, actor string) (Agent, error) {
	// Keys rely on an ID never holding NUL; callers pass parsed SPIFFE IDs.
	if a.ID == "" || strings.ContainsRune(a.ID, 0) || !a.Level.Valid() {
		return Agent{}, refuse(ErrInvalid, "agent needs an ID without NUL and a valid level")
	}
	now := s.now().UTC()
	a.Status, a.CreatedAt, a.UpdatedAt, a.UpdatedBy, a.Revision, a.LevelSince = Active, now, now, actor, 1, now
	// Registrations come in bulk when a fleet is onboarded: they share
	// commits like issuances do.
	err := s.group(func(tx kv.Tx) error {
		if err := s.room(tx); err != nil {
			return err
		}
		if tx.Bucket(bucketAgents).Get([]byte(a.ID)) != nil {
			return refuse(ErrExists, "agent %s", a.ID)
		}
		return s.putAgent(tx, Agent{}, a, AgentChange{Action: ActionRegister})
	})
	if err != nil {
		return Agent{}, err
	}
	return a, nil
}

// GetAgent returns the agent with the given SPIFFE ID.
func (s *Store) GetAgent(id string) (Agent, error) {
	var a Agent
	err := s.read(func(tx kv.Tx) error {
		var err error
		a, err = getAgent(tx, id)
		return err
	})
	return a, err
}

// ListAgents returns up to limit agents (100 if limit is not positive)
// whose IDs sort after `after`, and the ID to continue after ("" when there
// are no more).
func (s *Store) ListAgents(after string, limit int, includeDeregistered bool) ([]Agent, string, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []Agent
	next := ""
	err := s.view(func(tx kv.Tx) error {
		c := tx.Bucket(bucketAgents).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			var a Agent
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("store: decode agent %q: %w", k, err)
			}
			if a.Status == Deregistered && !includeDeregistered {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].ID
				return nil
			}
			out = append(out, a)
		}
		return nil
	})
	return out, next, err
}

// UpdateAgent applies change to an active agent and records it as made by
// actor, with an agent_updated audit record naming the fields changed. If
// expectedRevision is non-zero the agent must be at it.
func (s *Store) UpdateAgent(id, actor string, expectedRevision uint64, change func(*Agent)) (Agent, error) {
	return s.modify(id, actor, expectedRevision, AgentChange{Action: ActionUpdate}, change)
}

// DeregisterAgent marks an agent deregistered, audited as
// agent_deregistered, and, in the same transaction, revokes its lineage (see
// RevokeLineage): from the commit on, the agent and everything it delegated
// get nothing, and the Vault side is queued. The record and its history are
// kept.
func (s *Store) DeregisterAgent(id, actor, reason string) (Agent, Revocation, error) {
	var rev Revocation
	a, err := s.modify(id, actor, 0, AgentChange{Action: ActionDeregister, Reason: reason}, func(*Agent) {}, func(tx kv.Tx) error {
		var err error
		rev, err = s.revokeLineage(tx, Root{AgentID: id}, actor, reason, s.now().UTC())
		return err
	})
	if err = s.settled(&rev, err); err != nil {
		return Agent{}, Revocation{}, err
	}
	return a, rev, nil
}

// modify applies change to an active agent as ch, then runs also in the
// same transaction.
func (s *Store) modify(id, actor string, expectedRevision uint64, ch AgentChange, change func(*Agent), also ...func(kv.Tx) error) (Agent, error) {
	var a Agent
	err := s.update(func(tx kv.Tx) error {
		var err error
		if a, err = getAgent(tx, id); err != nil {
			return err
		}
		if a.Status == Deregistered {
			return refuse(ErrDeregistered, "%s", id)
		}
		if expectedRevision != 0 && a.Revision != expectedRevision {
			return refuse(ErrConflict, "agent %s is at revision %d, not %d", id, a.Revision, expectedRevision)
		}
		orig := a
		change(&a)
		// Identity, creation and standing change only through their own
		// operations, so the history always says what happened.
		a.ID, a.CreatedAt, a.Status, a.Kill, a.LevelSince = orig.ID, orig.CreatedAt, orig.Status, orig.Kill, orig.LevelSince
		if ch.Action == ActionDeregister {
			a.Status = Deregistered
		}
		if !a.Level.Valid() {
			return refuse(ErrInvalid, "invalid level %d", a.Level)
		}
		a.UpdatedAt, a.UpdatedBy, a.Revision = s.now().UTC(), actor, orig.Revision+1
		if a.Level != orig.Level || a.LevelSince.IsZero() {
			a.LevelSince = a.UpdatedAt
		}
		if err := s.putAgent(tx, orig, a, ch); err != nil {
			return err
		}
		for _, f := range also {
			if err := f(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Agent{}, err
	}
	return a, nil
}

// AgentHistory returns every recorded change to an agent, oldest first.
func (s *Store) AgentHistory(id string) ([]AgentChange, error) {
	var out []AgentChange
	err := s.view(func(tx kv.Tx) error {
		prefix := historyPrefix(id)
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var ch AgentChange
			if err := json.Unmarshal(v, &ch); err != nil {
				return fmt.Errorf("store: decode history of %s: %w", id, err)
			}
			out = append(out, ch)
		}
		if len(out) == 0 {
			return refuse(ErrNotFound, "agent %s", id)
		}
		return nil
	})
	return out, err
}

// Credentials returns the credentials recorded for an agent.
func (s *Store) Credentials(agentID string) ([]Credential, error) {
	var out []Credential
	err := s.view(func(tx kv.Tx) error {
		prefix := credentialKey(agentID, "")
		seen := map[string]time.Time{}
		c := tx.Bucket(bucketCredentials).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			cr, err := readCredential(tx, v, seen)
			if err != nil {
				return err
			}
			out = append(out, cr)
		}
		return nil
	})
	return out, err
}

// LiveCounts returns how many live credentials (neither revoked, through
// their own record, their anchor or their lineage, nor expired) each of
// agentIDs holds itself, in one read transaction (on etcd, a request per
// agent): a page of agents, not a lineage each. Agents with none are
// absent.
func (s *Store) LiveCounts(agentIDs []string) (map[string]int, error) {
	out := map[string]int{}
	now := s.now()
	err := s.view(func(tx kv.Tx) error {
		seen := map[string]time.Time{}
		c := tx.Bucket(bucketCredentials).Cursor()
		for _, id := range agentIDs {
			prefix := credentialKey(id, "")
			for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				cr, err := readCredential(tx, v, seen)
				if err != nil {
					return err
				}
				if cr.RevokedAt.IsZero() && cr.ExpiresAt.After(now) {
					out[id]++
				}
			}
		}
		return nil
	})
	return out, err
}

// Credential returns the agent's credential with accessor (an access
// token's: its jti), revoked if its anchor, its lineage or the agent was;
// ErrNotFound if there is none.
func (s *Store) Credential(agentID, accessor string) (Credential, error) {
	var cr Credential
	err := s.view(func(tx kv.Tx) error {
		v := tx.Bucket(bucketCredentials).Get(credentialKey(agentID, accessor))
		if v == nil {
			return refuse(ErrNotFound, "credential %s of agent %s", accessor, agentID)
		}
		var err error
		cr, err = readCredential(tx, v, map[string]time.Time{})
		return err
	})
	return cr, err
}

func getAgent(tx kv.Tx, id string) (Agent, error) {
	var a Agent
	v := tx.Bucket(bucketAgents).Get([]byte(id))
	if v == nil {
		return a, refuse(ErrNotFound, "agent %s", id)
	}
	if a, ok := agentsDecoded.get(id, v); ok {
		return a, nil
	}
	// Unmarshal copies out of the mmap'd value, so a outlives tx safely.
	if err := json.Unmarshal(v, &a); err != nil {
		return a, fmt.Errorf("store: decode agent %s: %w", id, err)
	}
	agentsDecoded.put(id, v, a)
	return a, nil
}

// agentsDecoded remembers agent records as decoded, by the exact bytes
// they were decoded from: every request reads its caller's record, most
// of them twice (the decision, the credential's record), and decoding
// JSON costs more than the rest of reading it. Keyed by the bytes, an
// entry is right for any store and any snapshot that holds them.
var agentsDecoded = agentCache{m: map[string]decodedAgent{}}

// agentCacheMax bounds agentsDecoded; when it is full, a random half is
// dropped.
const agentCacheMax = 16384

type agentCache struct {
	mu sync.Mutex
	m  map[string]decodedAgent
}

type decodedAgent struct {
	raw string
	a   Agent
}

// get returns the agent decoded from raw, if remembered.
func (c *agentCache) get(id string, raw []byte) (Agent, bool) {
	c.mu.Lock()
	d, ok := c.m[id]
	c.mu.Unlock()
	if !ok || d.raw != string(raw) {
		return Agent{}, false
	}
	return d.a.clone(), true
}

// put remembers a, decoded from raw.
func (c *agentCache) put(id string, raw []byte, a Agent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= agentCacheMax {
		n := 0
		for k := range c.m { // map order is random
			if n++; n > agentCacheMax/2 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[id] = decodedAgent{raw: string(raw), a: a.clone()}
}

// clone is a copy of a that shares nothing with it: every field of a
// reference type (TestAgentCloneShares lists them) is copied.
func (a Agent) clone() Agent {
	a.Roles = slices.Clone(a.Roles)
	if a.Kill != nil {
		k := *a.Kill
		a.Kill = &k
	}
	return a
}

// changeKinds are the audit record kinds of the changes to an agent. The
// level changes keep the kinds the trail has always had for them.
var changeKinds = map[string]string{
	ActionRegister:   "agent_registered",
	ActionUpdate:     "agent_updated",
	ActionDeregister: "agent_deregistered",
	ActionKill:       "agent_killed",
	ActionRelease:    "agent_released",
	ActionPromote:    "agent_promote",
	ActionDemote:     "agent_demote",
	ActionRollback:   "agent_rollback",
	ActionMigrate:    "agent_migrate",
}

// putAgent writes after, its history entry and its audit record in tx, so
// that no change to the registry commits without its record in the chain.
// before is the record the change started from: the zero Agent for a
// registration.
func (s *Store) putAgent(tx kv.Tx, before, after Agent, ch AgentChange) error {
	kind, ok := changeKinds[ch.Action]
	if !ok {
		return refuse(ErrInvalid, "agent change %q", ch.Action)
	}
	ch.Revision, ch.Time, ch.Actor, ch.Agent = after.Revision, after.UpdatedAt, after.UpdatedBy, after
	av, err := json.Marshal(after)
	if err != nil {
		return fmt.Errorf("store: encode agent: %w", err)
	}
	hv, err := json.Marshal(ch)
	if err != nil {
		return fmt.Errorf("store: encode change: %w", err)
	}
	if err := tx.Bucket(bucketAgents).Put([]byte(after.ID), av); err != nil {
		return fmt.Errorf("store: put agent: %w", err)
	}
	if err := tx.Bucket(bucketHistory).Put(binary.BigEndian.AppendUint64(historyPrefix(after.ID), after.Revision), hv); err != nil {
		return fmt.Errorf("store: put change: %w", err)
	}
	return s.appendAudit(tx, AuditRecord{Time: after.UpdatedAt, Kind: kind, Actor: after.UpdatedBy, Subject: after.ID,
		Detail: changeDetail(before, after, ch.Reason)})
}

// changeDetail describes a change to an agent for its audit record: the
// agent, its level and revision after the change, the reason if any, which
// fields changed ("changed", comma-separated) and the new value of each.
// A level change of a registered agent also gives "from" and "to"; a kill
// gives "lineage_root" and the decision "deny".
func changeDetail(before, after Agent, reason string) map[string]string {
	d := map[string]string{"agent": after.ID, "level": after.Level.String(), "revision": strconv.FormatUint(after.Revision, 10)}
	if reason != "" {
		d["reason"] = reason
	}
	var changed []string
	field := func(name, was, is string) {
		if was != is {
			changed = append(changed, name)
			d[name] = is
		}
	}
	field("owner", before.Owner, after.Owner)
	field("purpose", before.Purpose, after.Purpose)
	field("roles", strings.Join(before.Roles, ","), strings.Join(after.Roles, ","))
	if before.Level != after.Level {
		changed = append(changed, "level")
		if before.Revision != 0 {
			d["from"], d["to"] = before.Level.String(), after.Level.String()
		}
	}
	field("version", before.Version, after.Version)
	field("config_digest", before.ConfigDigest, after.ConfigDigest)
	if before.Revision != 0 {
		field("status", before.Status.String(), after.Status.String())
	}
	switch {
	case before.Kill == nil && after.Kill != nil:
		changed = append(changed, "kill")
		d["lineage_root"], d["decision"] = after.Kill.Lineage, "deny"
	case before.Kill != nil && after.Kill == nil:
		changed = append(changed, "kill")
	}
	d["changed"] = strings.Join(changed, ",")
	return d
}

// Keys are "<agent id>\x00<suffix>": a SPIFFE ID never contains NUL, so a
// prefix scan for one agent never reaches another.
func historyPrefix(id string) []byte { return pair(id, "") }

func credentialKey(agentID, accessor string) []byte { return pair(agentID, accessor) }

// LiveCredentials returns every credential neither revoked nor expired at
// now.
func (s *Store) LiveCredentials(now time.Time) ([]Credential, error) {
	var out []Credential
	err := s.view(func(tx kv.Tx) error {
		var err error
		out, err = liveCredentials(tx, now)
		return err
	})
	return out, err
}

// Credential kinds (Credential.Kind; "" is a service token).
const (
	// KindBatch is a batch token: it dies with its anchor, never alone.
	KindBatch = "batch"
	// KindJWT is an OAuth access token (docs/oauth.md): no Vault token at
	// all, its accessor its jti. Its record is all there is to revoke:
	// introspection and the revocation events judge it by it.
	KindJWT = "jwt"
)

// inVault says whether revoking c means revoking a Vault token by its
// accessor (a service token), not only its record.
func (c Credential) inVault() bool { return c.Kind == "" }

// Refusal is a store error that a caller can act on: Kind is one of the
// sentinel errors above and Msg says, for a person, what is wrong ("approval
// X is denied, not pending"). Its Error is the sentinel's text and Msg.
type Refusal struct {
	Kind error
	Msg  string
}

func (r *Refusal) Error() string { return r.Kind.Error() + ": " + r.Msg }
func (r *Refusal) Unwrap() error { return r.Kind }

// refuse is a Refusal of kind with a formatted message.
func refuse(kind error, format string, args ...any) error {
	return &Refusal{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// keyIndexed marks a store whose indexes (bucketBare, bucketReceived,
// bucketOpenApprovals) are filled; stores written before them had none.
var keyIndexed = []byte("indexed_v2")

// fillIndexes fills, once, the indexes for what was recorded before they
// existed.
func fillIndexes(tx kv.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta.Get(keyIndexed) != nil {
		return nil
	}
	bare := tx.Bucket(bucketBare)
	err := tx.Bucket(bucketCredentials).ForEach(func(k, v []byte) error {
		var c Credential
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("store: decode credential: %w", err)
		}
		if c.Anchor != "" {
			return nil
		}
		return bare.Put(pair(credentialNode(c), c.Accessor), bytes.Clone(k))
	})
	if err != nil {
		return err
	}
	if err := indexApprovals(tx); err != nil {
		return err
	}
	received := tx.Bucket(bucketReceived)
	err = tx.Bucket(bucketGrants).ForEach(func(k, v []byte) error {
		var g delegation.Grant
		if err := json.Unmarshal(v, &g); err != nil {
			return fmt.Errorf("store: decode grant: %w", err)
		}
		return received.Put(pair(g.Delegatee, g.ID), nil)
	})
	if err != nil {
		return err
	}
	return meta.Put(keyIndexed, []byte{1})
}

// indexApprovals fills bucketOpenApprovals with the requests not yet
// final, for a store written before it existed.
func indexApprovals(tx kv.Tx) error {
	open := tx.Bucket(bucketOpenApprovals)
	return tx.Bucket(bucketApprovals).ForEach(func(k, v []byte) error {
		var a Approval
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("store: decode approval %s: %w", k, err)
		}
		if a.Status.Final() {
			return nil
		}
		return open.Put(pair(a.AgentID, a.ID), nil)
	})
}
