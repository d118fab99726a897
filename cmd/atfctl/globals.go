package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/agentictrust/atf/broker/client"
)

// globals are the flags every command shares.
type globals struct {
	cfg client.Config
	// addr is --addr: one address or gRPC target, or several replicas'
	// addresses, comma-separated.
	addr   string
	output string
	// loginFile is --login-file: where atfctl login keeps a person's
	// sign-in.
	loginFile string
}

func (g *globals) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.addr, "addr", envOr("ATF_BROKER_ADDR", "127.0.0.1:8443"),
		"broker address host:port; several replicas comma-separated, or a DNS name for all of them as dns:///host:port (env ATF_BROKER_ADDR)")
	f.StringVar(&g.cfg.BrokerID, "broker-id", os.Getenv("ATF_BROKER_ID"), "SPIFFE ID the broker must present; default spiffe://<your trust domain>/atfd (env ATF_BROKER_ID)")
	f.StringVar(&g.cfg.WorkloadAPIAddr, "workload-api", "", "Workload API socket, e.g. unix:///run/spire/agent.sock (default $SPIFFE_ENDPOINT_SOCKET)")
	f.StringVar(&g.cfg.SVIDFile, "svid", "", "X.509-SVID file (PEM), instead of the Workload API")
	f.StringVar(&g.cfg.SVIDKeyFile, "svid-key", "", "private key of --svid (PEM)")
	f.StringVar(&g.cfg.BundleFile, "bundle", "", "trust bundle of the broker's trust domain (PEM or SPIFFE bundle), instead of the Workload API")
	f.BoolVar(&g.cfg.JWT, "jwt", false, "authenticate with a JWT-SVID from the Workload API instead of the X.509-SVID")
	f.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&g.loginFile, "login-file", os.Getenv("ATF_LOGIN_FILE"), "where atfctl login keeps your sign-in as a person; default atf/login.json in your configuration directory (env ATF_LOGIN_FILE)")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// dial connects to the broker with the global flags.
func (g *globals) dial(ctx context.Context) (*client.Conn, error) {
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, err
	}
	return client.Dial(ctx, cfg)
}

// checkOutput refuses an --output other than table or json.
func (g *globals) checkOutput() error {
	if g.output != "table" && g.output != "json" {
		return usageError{fmt.Errorf("--output must be table or json, not %q", g.output)}
	}
	return nil
}

// clientConfig is the client's configuration from the global flags: --addr
// may list several replicas, comma-separated, which the client fails over
// between.
func (g *globals) clientConfig() (client.Config, error) {
	if err := g.checkOutput(); err != nil {
		return client.Config{}, err
	}
	cfg := g.cfg
	l, err := g.signedIn()
	if err != nil {
		return client.Config{}, err
	}
	if l != nil {
		cfg.IDToken = l.IDToken
		if cfg.BrokerID == "" {
			cfg.BrokerID = l.BrokerID
		}
		if cfg.BundleFile == "" {
			cfg.BundleFile = l.BundleFile
		}
	}
	cfg.Addr, cfg.Addrs = "", nil
	for a := range strings.SplitSeq(g.addr, ",") {
		if a = strings.TrimSpace(a); a == "" {
			return client.Config{}, usageError{fmt.Errorf("--addr %q has an empty address: list replicas as host:port,host:port", g.addr)}
		}
		cfg.Addrs = append(cfg.Addrs, a)
	}
	return cfg, nil
}

// print writes m as JSON, or as a table through table.
func (g *globals) print(w io.Writer, m proto.Message, table func(*tabwriter.Writer)) error {
	if g.output == "json" {
		raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		var pretty any
		if err := json.Unmarshal(raw, &pretty); err != nil {
			return err
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(pretty)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// call is the shape of nearly every command: dial the broker, make one call
// with the connection, print its answer (as JSON, or as a table by table).
func call[R proto.Message](cmd *cobra.Command, g *globals, do func(context.Context, *client.Conn) (R, error), table func(*tabwriter.Writer, R)) error {
	c, err := g.dial(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := do(cmd.Context(), c)
	if err != nil {
		return err
	}
	return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) { table(w, r) })
}

// follow is the shape of the watch commands: dial, open a stream, print
// each message as it comes (flushed at once) until Ctrl-C. A stream the
// broker refuses ends without the watch header (client.WatchHeader); its
// error comes with the first Recv and is returned before anything is
// printed.
func follow[M any, PM interface {
	*M
	proto.Message
}](cmd *cobra.Command, g *globals, what string, open func(context.Context, *client.Conn) (grpc.ServerStreamingClient[M], error), table func(*tabwriter.Writer, PM)) error {
	c, err := g.dial(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	stream, err := open(cmd.Context(), c)
	if err != nil {
		return err
	}
	md, err := stream.Header()
	if err != nil {
		return err
	}
	var first *M
	pending := false
	if len(md.Get(client.WatchHeader)) == 0 { // refused: Recv says why
		if first, err = stream.Recv(); err != nil {
			return err
		}
		pending = true
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "watching %s; Ctrl-C to stop\n", what)
	out := bufio.NewWriter(cmd.OutOrStdout())
	for {
		r := first
		if !pending {
			if r, err = stream.Recv(); err != nil {
				if cmd.Context().Err() != nil {
					return nil
				}
				return err
			}
		}
		pending = false
		if err := g.print(out, PM(r), func(w *tabwriter.Writer) { table(w, PM(r)) }); err != nil {
			return err
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
}
