// Package client connects agents and operators to an ATF broker: it gets the
// caller's SVID (from the SPIRE Workload API or from files), dials the broker
// over mutual TLS, checks that the server is the broker it expects, and
// optionally authenticates with a JWT-SVID instead of the X.509-SVID.
//
// Agents use New: an Agent caches each role's credential, refreshes it
// before it expires, drops it the moment the broker revokes it, and waits
// for a human's approval where its level needs one. Given several
// replicas (Config.Addrs, or a DNS name), it moves to another when one
// goes, and its revocation watch resumes there without missing what was
// revoked meanwhile. Dial is the raw connection, for operators' tools.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/agentictrust/atf/broker/svid"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Config says how to reach the broker and who the caller is.
type Config struct {
	// Addr is the broker's gRPC address, host:port, or a gRPC target that
	// names several replicas, such as dns:///atfd.example.org:8443 (every
	// address the name has is a replica). A host name alone is resolved
	// the same way.
	Addr string
	// Addrs are replicas' addresses, host:port, after Addr if it is set.
	// Whatever names several replicas, the first that answers serves, in
	// order, and when it goes the next that answers takes over: calls
	// carry on, and the revocation watch resumes there (Agent). Every
	// replica must present BrokerID.
	Addrs []string
	// BrokerID is the SPIFFE ID the broker must present; default
	// spiffe://<caller's trust domain>/atfd.
	BrokerID string
	// WorkloadAPIAddr defaults to $SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPIAddr string
	// SVIDFile, SVIDKeyFile and BundleFile replace the Workload API; the
	// bundle is the broker's trust domain's (PEM or SPIFFE bundle).
	SVIDFile    string
	SVIDKeyFile string
	BundleFile  string
	// JWT authenticates with a JWT-SVID from the Workload API, whose
	// audience is the broker's ID, instead of the X.509-SVID.
	JWT bool
	// IDToken, when set, is a person's sign-in (Login.IDToken, from
	// atfctl login) to call with instead of any SVID: the connection then
	// only verifies the broker, with BundleFile and BrokerID, both
	// required.
	IDToken string
}

// Conn is a connection to the broker.
type Conn struct {
	*grpc.ClientConn
	Broker brokerv1.BrokerServiceClient
	Admin  adminv1.AdminServiceClient
	// Approvals is for approvers (approvals.approvers in atfd's config).
	Approvals adminv1.ApprovalServiceClient
	// Response is the kill switch, for admins and security operators.
	Response adminv1.ResponseServiceClient
	// Maturity is the agents' maturity lifecycle, for admins.
	Maturity adminv1.MaturityServiceClient
	source   *svid.Source
}

// Dial connects to the broker. The connection is lazy: errors reaching the
// broker surface on the first call.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	target, resolvers, err := brokerTarget(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.IDToken != "" {
		return dialAsPerson(target, resolvers, cfg)
	}
	var own spiffeid.ID
	if cfg.SVIDFile != "" {
		sv, err := x509svid.Load(cfg.SVIDFile, cfg.SVIDKeyFile)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		own = sv.ID
	}
	// The broker's ID may depend on the caller's, which the Workload API
	// only tells once the source is open.
	brokerID, err := resolveBrokerID(cfg.BrokerID, own)
	if err != nil {
		return nil, err
	}
	sc := svid.Config{WorkloadAPIAddr: cfg.WorkloadAPIAddr, CertFile: cfg.SVIDFile, KeyFile: cfg.SVIDKeyFile}
	if cfg.BundleFile != "" {
		if brokerID.IsZero() {
			return nil, errors.New("client: a bundle file without an SVID file needs the broker's SPIFFE ID")
		}
		sc.BundleFiles = map[string]string{brokerID.TrustDomain().Name(): cfg.BundleFile}
	}
	src, err := svid.Open(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if brokerID.IsZero() {
		if own, err = src.ID(); err == nil {
			brokerID, err = resolveBrokerID("", own)
		}
		if err != nil {
			src.Close()
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	opts := resolvers
	if cfg.JWT {
		tc := tlsconfig.TLSClientConfig(src, tlsconfig.AuthorizeID(brokerID))
		opts = append(opts,
			grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithPerRPCCredentials(jwtCreds{src: src, audience: brokerID.String()}))
	} else {
		tc := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(brokerID))
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("client: %w", err)
	}
	return newConn(cc, src), nil
}

func newConn(cc *grpc.ClientConn, src *svid.Source) *Conn {
	return &Conn{
		ClientConn: cc,
		Broker:     brokerv1.NewBrokerServiceClient(cc),
		Admin:      adminv1.NewAdminServiceClient(cc),
		Approvals:  adminv1.NewApprovalServiceClient(cc),
		Response:   adminv1.NewResponseServiceClient(cc),
		Maturity:   adminv1.NewMaturityServiceClient(cc),
		source:     src,
	}
}

// dialAsPerson connects with a person's ID token: TLS verifying the
// broker's X.509-SVID against the bundle file, the token on every call.
func dialAsPerson(target string, opts []grpc.DialOption, cfg Config) (*Conn, error) {
	if cfg.BundleFile == "" || cfg.BrokerID == "" {
		return nil, errors.New("client: a person's sign-in needs the broker's trust bundle and SPIFFE ID to verify it " +
			"(atfctl: --bundle and --broker-id, or give them to atfctl login)")
	}
	brokerID, err := resolveBrokerID(cfg.BrokerID, spiffeid.ID{})
	if err != nil {
		return nil, err
	}
	bundles, err := svid.LoadBundles(map[string]string{brokerID.TrustDomain().Name(): cfg.BundleFile})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	tc := tlsconfig.TLSClientConfig(bundles, tlsconfig.AuthorizeID(brokerID))
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)), grpc.WithPerRPCCredentials(bearer(cfg.IDToken)))
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return newConn(cc, nil), nil
}

// bearer attaches a person's ID token to every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// Close closes the connection and the SVID source.
func (c *Conn) Close() error {
	err := c.ClientConn.Close()
	if c.source != nil {
		err = errors.Join(err, c.source.Close())
	}
	return err
}

// brokerTarget is the gRPC target of cfg's addresses, and the dial
// options it needs. One address or target is gRPC's to resolve (by DNS);
// several go to a resolver of their own. Either way gRPC's pick_first
// takes the first address that answers, in order, and moves on when it
// goes. The server's identity is its SPIFFE ID, never a host name, so any
// replica will do.
func brokerTarget(cfg Config) (string, []grpc.DialOption, error) {
	addrs := cfg.Addrs
	if cfg.Addr != "" {
		addrs = append([]string{cfg.Addr}, addrs...)
	}
	switch len(addrs) {
	case 0:
		return "", nil, errors.New("client: broker address is required")
	case 1:
		return addrs[0], nil, nil
	}
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil || strings.Contains(a, "/") {
			return "", nil, fmt.Errorf("client: broker address %q is not host:port; of several addresses each is one replica's host:port "+
				"(a target such as dns:///atfd.example.org:8443 names several alone)", a)
		}
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}}
	}
	r := manual.NewBuilderWithScheme("atf-replicas")
	r.InitialState(resolver.State{Endpoints: eps})
	return r.Scheme() + ":///" + addrs[0], []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

// resolveBrokerID returns the configured broker ID or, by default,
// spiffe://<own trust domain>/atfd; the zero ID if neither is known yet.
func resolveBrokerID(configured string, own spiffeid.ID) (spiffeid.ID, error) {
	switch {
	case configured != "":
		id, err := spiffeid.FromString(configured)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("client: broker ID: %w", err)
		}
		return id, nil
	case own.IsZero():
		return spiffeid.ID{}, nil
	}
	return spiffeid.FromSegments(own.TrustDomain(), "atfd")
}

// jwtCreds attaches a fresh JWT-SVID to every call; the Workload API caches
// and rotates them.
type jwtCreds struct {
	src      *svid.Source
	audience string
}

func (j jwtCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := j.src.FetchJWTSVID(ctx, j.audience)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

func (jwtCreds) RequireTransportSecurity() bool { return true }
