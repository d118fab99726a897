package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentictrust/atf/broker/client"
)

// A person signs in on the command line with their company's OpenID
// provider (the console's, docs/console.md): `atfctl login` runs the
// device authorization grant and keeps the ID token in a file only they
// read; the commands that follow call the broker with it, as that person,
// until it expires or `atfctl logout`. An SVID given by flag
// (--svid, --jwt, --workload-api) always wins over a sign-in.

func newLogin(g *globals) *cobra.Command {
	var issuer, clientID string
	var scopes []string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Sign in as a person through your OpenID provider (device authorization grant)",
		Long: `Sign in as a person: atfctl shows a web address and a code; open it in any
browser, enter the code and sign in at your company's OpenID provider. The ID
token the provider then gives atfctl is kept in --login-file (readable by you
only) and every following command calls the broker as you, with the roles the
broker maps your groups to (console.roles), until it expires or 'atfctl logout'.

The broker must name atfctl's client at the provider (console.cli_client_id).
Give the broker's trust bundle and SPIFFE ID here (--bundle, --broker-id), to
verify the broker with: they are kept with the sign-in.`,
		Example: `  atfctl --addr atf.example.com:8443 --broker-id spiffe://example.org/atfd --bundle example.org.pem \
      login --issuer https://login.example.com
  atfctl approvals list          # as the person signed in
  atfctl login --issuer https://login.example.com --client-id atf-cli --scope profile,email,roles`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if issuer == "" {
				return usageError{errors.New("--issuer is required: your OpenID provider's issuer URL (console.oidc.issuer of atfd)")}
			}
			if g.cfg.BundleFile == "" || g.cfg.BrokerID == "" {
				return usageError{errors.New("--bundle and --broker-id are required: the broker's trust bundle and SPIFFE ID, " +
					"which every command signed in as you verifies the broker with")}
			}
			path, err := g.loginPath()
			if err != nil {
				return err
			}
			l, err := client.DeviceLogin(cmd.Context(), issuer, clientID, scopes, func(uri, complete, code string) {
				fmt.Fprintf(cmd.ErrOrStderr(), "To sign in, open %s and enter the code %s\n", uri, code)
				if complete != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "(or open %s)\n", complete)
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "Waiting for you to allow it at the provider; Ctrl-C to give up.")
			})
			if err != nil {
				return err
			}
			l.BrokerID, l.BundleFile = g.cfg.BrokerID, g.cfg.BundleFile
			if l.BundleFile != "" {
				if l.BundleFile, err = filepath.Abs(l.BundleFile); err != nil {
					return err
				}
			}
			b, err := json.MarshalIndent(l, "", "  ")
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			if err := writeFileAtomic(path, append(b, '\n')); err != nil {
				return fmt.Errorf("keep the sign-in: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Signed in as %s (%s) until %s.\n", l.Name, l.Principal, l.Expiry.Local().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&issuer, "issuer", os.Getenv("ATF_OIDC_ISSUER"), "your OpenID provider's issuer URL (env ATF_OIDC_ISSUER)")
	f.StringVar(&clientID, "client-id", envOr("ATF_OIDC_CLIENT_ID", "atfctl"), "atfctl's client id at the provider, console.cli_client_id of atfd (env ATF_OIDC_CLIENT_ID)")
	f.StringSliceVar(&scopes, "scope", []string{"profile", "email", "groups"}, "scopes to ask for besides openid; the one that puts your groups in the ID token among them")
	return cmd
}

func newLogout(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "logout",
		Short:   "Forget the sign-in of atfctl login",
		Example: `  atfctl logout                  # the commands then call with your SVID again`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := g.loginPath()
			if err != nil {
				return err
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Signed out.")
			return nil
		},
	}
}

// loginPath is where the sign-in is kept: --login-file, else
// atf/login.json in the user's configuration directory.
func (g *globals) loginPath() (string, error) {
	if g.loginFile != "" {
		return g.loginFile, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no place to keep a sign-in (give --login-file): %w", err)
	}
	return filepath.Join(dir, "atf", "login.json"), nil
}

// signedIn is the person's sign-in to call with, nil if there is none or
// an SVID was asked for by flag. A sign-in that has expired, or sits in a
// file others may read (it is a bearer token), is an error that says
// what to do.
func (g *globals) signedIn() (*client.Login, error) {
	if g.cfg.SVIDFile != "" || g.cfg.JWT || g.cfg.WorkloadAPIAddr != "" {
		return nil, nil
	}
	path, err := g.loginPath()
	if err != nil {
		return nil, nil
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, err
	case st.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%s holds a sign-in that others may read (mode %s): run 'atfctl logout' and 'atfctl login' again", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var l client.Login
	if err := json.Unmarshal(b, &l); err != nil || l.IDToken == "" {
		return nil, fmt.Errorf("%s is not a sign-in of atfctl login: run 'atfctl logout' and 'atfctl login' again", path)
	}
	if !time.Now().Before(l.Expiry) {
		return nil, fmt.Errorf("your sign-in as %s expired at %s: run 'atfctl login' again (or 'atfctl logout' to call with your SVID)",
			l.Principal, l.Expiry.Local().Format(time.RFC3339))
	}
	return &l, nil
}
