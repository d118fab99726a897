package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentictrust/atf/broker/client"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

func newSidecar(g *globals) *cobra.Command {
	var (
		roleFlags []string
		dir       string
		format    string
		ttl       time.Duration
		once      bool
	)
	cmd := &cobra.Command{
		Use:   "sidecar --role ROLE[=FILE] [--role ...] --dir DIR",
		Short: "Keep the agent's credentials fresh in files, for agents that read files",
		Long: `sidecar fetches a credential for each --role and writes it to DIR/FILE (default
FILE: the role, with / as _), atomically and readable only by its owner (0600),
then keeps it fresh: each refreshed credential replaces its file before the old
one expires.

A revoked or expired credential's file is removed at once, then sidecar asks
for a new one. If the broker refuses (the agent was killed, deregistered or
lost the role), sidecar removes every file and exits 9. When it stops (Ctrl-C,
SIGTERM) it removes its files: a token must not outlive the watch over it.

--format token writes the bare token; json writes the whole credential (token,
accessor, role, policies, expires_at, vault_address). --once writes the files
and exits, leaving them (for init containers; nothing then removes a revoked
credential's file).`,
		Example: `  atfctl sidecar --role reports-read --dir /run/atf
  atfctl sidecar --role reports-read=read.json --format json --dir /run/atf
  atfctl sidecar --role reports-read --dir /run/atf --once`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			roles, err := parseRoles(roleFlags, func(role string) string { return strings.ReplaceAll(role, "/", "_") })
			if err != nil {
				return err
			}
			for _, r := range roles {
				if r.name != filepath.Base(r.name) || r.name == "." || r.name == ".." || strings.HasPrefix(r.name, ".") {
					return usageError{fmt.Errorf("--role %s=%s: the file must be a plain name inside --dir, not starting with a dot", r.role, r.name)}
				}
			}
			if dir == "" {
				return usageError{errors.New("--dir is required")}
			}
			if format != "token" && format != "json" {
				return usageError{fmt.Errorf("--format must be token or json, not %q", format)}
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM)
			defer stop()
			cmd.SetContext(ctx)
			a, changes, stop, err := g.startAgent(cmd, ttl)
			if err != nil {
				return err
			}
			defer stop()
			s := &sidecar{cmd: cmd, agent: a, roles: roles, dir: dir, json: format == "json"}
			return s.run(changes, once)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&roleFlags, "role", nil, "role to fetch, optionally =FILE for its file name (repeatable; required)")
	f.StringVar(&dir, "dir", "", "directory for the credential files, created 0700 if missing (required)")
	f.StringVar(&format, "format", "token", "file contents: token or json")
	f.DurationVar(&ttl, "ttl", 0, "requested lifetime of each credential; default and maximum: the role's and your level's")
	f.BoolVar(&once, "once", false, "write the files and exit, leaving them")
	return cmd
}

// sidecar is one atfctl sidecar.
type sidecar struct {
	cmd   *cobra.Command
	agent *client.Agent
	roles []roleTarget
	dir   string
	json  bool
	// held maps the accessors in the files to their roles and files.
	held map[string]roleTarget
}

func (s *sidecar) run(changes <-chan client.Change, once bool) error {
	ctx := s.cmd.Context()
	creds, err := fetchAll(ctx, s.agent, s.roles)
	if err != nil {
		return err
	}
	s.held = map[string]roleTarget{}
	for _, r := range s.roles {
		if err := s.write(r, creds[r.role]); err != nil {
			s.removeAll()
			return err
		}
	}
	fmt.Fprintf(s.cmd.ErrOrStderr(), "atfctl sidecar: wrote %d credential file(s) to %s\n", len(s.roles), s.dir)
	if once {
		return nil
	}
	defer s.removeAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-changes:
			r, ok := s.held[c.Accessor]
			if !ok {
				continue
			}
			delete(s.held, c.Accessor)
			if c.Kind == client.Refreshed {
				if err := s.write(r, c.Credential); err != nil {
					return err
				}
				continue
			}
			// Revoked, expired, or maybe revoked while the watch was down:
			// the file must not be read again.
			if err := os.Remove(filepath.Join(s.dir, r.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			fmt.Fprintf(s.cmd.ErrOrStderr(), "atfctl sidecar: credential for role %s %s%s; removed %s, fetching a new one\n", r.role, c.Kind, reasonSuffix(c.Reason), r.name)
			cred, err := s.refetch(ctx, r.role)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return exitError{code: exitRevoked, msg: fmt.Sprintf("the broker refuses a new credential for role %s (%s); removed every file", r.role, message(err))}
			}
			if err := s.write(r, cred); err != nil {
				return err
			}
		}
	}
}

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return " (" + reason + ")"
}

// refetch asks for a new credential for role until it gets one, the broker
// refuses the agent (permission denied, not found), or ctx ends.
func (s *sidecar) refetch(ctx context.Context, role string) (*brokerv1.Credential, error) {
	for attempt := 0; ; attempt++ {
		cred, err := s.agent.Credential(ctx, role)
		if err == nil {
			return cred, nil
		}
		if code := exitCode(err); code == 3 || code == 4 || ctx.Err() != nil {
			return nil, err
		}
		delay := min(time.Second<<min(attempt, 6), time.Minute)
		fmt.Fprintf(s.cmd.ErrOrStderr(), "atfctl sidecar: fetching role %s failed (%s); retrying in %s\n", role, message(err), delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// write replaces r's file with cred, atomically: readers see the old file or
// the new one, never a part.
func (s *sidecar) write(r roleTarget, cred *brokerv1.Credential) error {
	data := []byte(cred.GetToken())
	if s.json {
		var err error
		if data, err = (protojson.MarshalOptions{UseProtoNames: true, Multiline: true}).Marshal(cred); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(filepath.Join(s.dir, r.name), data); err != nil {
		return fmt.Errorf("writing the credential for role %s: %w", r.role, err)
	}
	s.held[cred.GetAccessor()] = r
	return nil
}

// removeAll removes every credential file.
func (s *sidecar) removeAll() {
	for _, r := range s.roles {
		_ = os.Remove(filepath.Join(s.dir, r.name)) // best effort, on the way out
	}
}
