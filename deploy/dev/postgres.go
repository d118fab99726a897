package dev

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	vaultapi "github.com/hashicorp/vault/api"

	// The PostgreSQL driver of database/sql, for the readiness check, the
	// demo data and Login.
	_ "github.com/lib/pq"
)

// The database the stack serves through Vault's database secrets engine:
// a role reading DatabaseCredsPath (policy demo-orders-db allows it) gets a
// PostgreSQL user that may read table orders.orders.
const (
	// DatabaseRole is the Vault database role, and DatabaseCredsPath the
	// path a credential reads its dynamic secret from.
	DatabaseRole      = "orders-db"
	DatabaseCredsPath = "database/creds/" + DatabaseRole
	// DatabaseName is the PostgreSQL database the issued users log in to.
	DatabaseName = "orders"

	// pgSuperuser is the PostgreSQL superuser Vault manages users with.
	pgSuperuser = "atf"
	// pgSystemUser runs PostgreSQL when the stack runs as root, which
	// PostgreSQL refuses; Debian's postgresql package creates it.
	pgSystemUser = "postgres"
)

// pgTools are the PostgreSQL programs StartPostgres needs in the bin
// directory; `make dev-tools` links them there from Debian's postgresql
// package.
var pgTools = []string{"initdb", "postgres"}

// Postgres is a PostgreSQL server the stack runs on loopback, with Vault's
// database secrets engine connected to it.
type Postgres struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// Dir holds the cluster; Close removes it.
	Dir string
}

// Login connects to DatabaseName as user with password and runs a query
// that needs the role's grant: it fails once Vault has dropped the user.
func (p *Postgres) Login(ctx context.Context, user, password string) error {
	db, err := sql.Open("postgres", p.url(user, password, DatabaseName))
	if err != nil {
		return fmt.Errorf("dev: postgres: %w", err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil {
		return fmt.Errorf("dev: postgres login as %s: %w", user, err)
	}
	return nil
}

// url is a connection URL for user on database.
func (p *Postgres) url(user, password, database string) string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword(user, password), Host: p.Addr, Path: "/" + database,
		RawQuery: "sslmode=disable&connect_timeout=5"}
	return u.String()
}

// StartPostgres starts PostgreSQL on a free port of 127.0.0.1 (as the
// postgres system user when the stack runs as root), creates the orders
// database, and mounts Vault's database secrets engine at database/ with
// role DatabaseRole. A second call returns the same server. Close stops it
// with the rest.
func (s *Stack) StartPostgres(ctx context.Context) (*Postgres, error) {
	s.pgMu.Lock()
	defer s.pgMu.Unlock()
	if s.pg != nil {
		return s.pg, nil
	}
	for _, tool := range pgTools {
		if _, err := os.Stat(filepath.Join(s.BinDir, tool)); err != nil {
			return nil, fmt.Errorf("dev: %s not found: run `make dev-tools`, which links Debian's postgresql package into bin/ "+
				"(and installs it when run as root; otherwise `apt-get install postgresql` first): %w", tool, err)
		}
	}
	as, err := pgCredential()
	if err != nil {
		return nil, err
	}
	password := rand.Text()
	pg, err := s.initPostgres(ctx, as, password)
	if err != nil {
		return nil, err
	}
	if err := s.servePostgres(ctx, pg, as, password); err != nil {
		return nil, err
	}
	if err := s.mountDatabase(ctx, pg, password); err != nil {
		return nil, err
	}
	s.pg = pg
	return pg, nil
}

// pgCredential is who PostgreSQL runs as: nil (the caller) unless that is
// root, which PostgreSQL refuses; then the postgres system user.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(pgSystemUser)
	if err != nil {
		return nil, fmt.Errorf("dev: PostgreSQL refuses to run as root and there is no %s user to run it as (Debian's postgresql package creates it): %w", pgSystemUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("dev: user %s: %w", pgSystemUser, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// initPostgres makes a cluster in a directory of its own (the stack's is
// private to its owner, and PostgreSQL may run as another user), with
// superuser pgSuperuser and password authentication only.
func (s *Stack) initPostgres(ctx context.Context, as *syscall.Credential, password string) (*Postgres, error) {
	dir, err := os.MkdirTemp("", "atf-pg-")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	s.mu.Lock()
	s.dirs = append(s.dirs, dir)
	s.mu.Unlock()
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	if as != nil {
		for _, p := range []string{dir, pwfile} {
			if err := os.Chown(p, int(as.Uid), int(as.Gid)); err != nil {
				return nil, fmt.Errorf("dev: %w", err)
			}
		}
	}
	bin, err := filepath.EvalSymlinks(filepath.Join(s.BinDir, "initdb"))
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "-D", filepath.Join(dir, "data"), "-U", pgSuperuser, "--pwfile", pwfile,
		"--auth=scram-sha-256", "--locale=C", "--encoding=UTF8", "--no-sync", "--no-instructions")
	cmd.Dir, cmd.Env = dir, pgEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
	out, err := cmd.CombinedOutput()
	_ = os.Remove(pwfile)
	if err != nil {
		return nil, fmt.Errorf("dev: initdb: %w: %s", err, lastLines(string(out), errorLogLines))
	}
	return &Postgres{Dir: dir}, nil
}

// servePostgres starts postgres on a free loopback port (no Unix socket),
// tuned for tests (no fsync), and waits until the superuser can log in.
func (s *Stack) servePostgres(ctx context.Context, pg *Postgres, as *syscall.Credential, password string) error {
	bin, err := filepath.EvalSymlinks(filepath.Join(s.BinDir, "postgres"))
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		pg.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command(bin, "-D", filepath.Join(pg.Dir, "data"), "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
			"-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=50")
		cmd.Dir, cmd.Env = pg.Dir, pgEnv()
		p, err := s.spawnCmd("postgres", cmd, as)
		if err != nil {
			return err
		}
		err = s.awaitReady(ctx, p, func(ctx context.Context) error {
			return pg.exec(ctx, password, "postgres", "SELECT 1")
		})
		if err != nil && attempt == 1 && p.addrInUse() {
			s.log.Info("PostgreSQL port was taken, retrying", keyAddr, pg.Addr)
			continue
		}
		if err != nil {
			return err
		}
		s.log.Info("PostgreSQL ready", keyAddr, pg.Addr)
		return nil
	}
}

// exec runs statements as the superuser on database.
func (p *Postgres) exec(ctx context.Context, password, database string, stmts ...string) error {
	db, err := sql.Open("postgres", p.url(pgSuperuser, password, database))
	if err != nil {
		return err
	}
	defer db.Close()
	for _, st := range stmts {
		if _, err := db.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("dev: postgres: %w", err)
		}
	}
	return nil
}

// mountDatabase creates the orders database and table, and has Vault's
// database secrets engine manage users in it: role DatabaseRole creates a
// LOGIN user valid until its lease ends, and Vault drops it when the lease
// is revoked.
func (s *Stack) mountDatabase(ctx context.Context, pg *Postgres, password string) error {
	if err := pg.exec(ctx, password, "postgres", "CREATE DATABASE "+DatabaseName); err != nil {
		return err
	}
	if err := pg.exec(ctx, password, DatabaseName, "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)",
		"INSERT INTO orders (item) VALUES ('laptop'), ('monitor')"); err != nil {
		return err
	}
	err := s.vault.Sys().MountWithContext(ctx, "database", &vaultapi.MountInput{Type: "database"})
	if err != nil {
		return fmt.Errorf("dev: mounting Vault's database secrets engine: %w", err)
	}
	for _, w := range []struct {
		path string
		data map[string]any
	}{
		{"database/config/" + DatabaseName, map[string]any{
			"plugin_name": "postgresql-database-plugin",
			// Vault fills in the user and password below.
			"connection_url": "postgresql://{{username}}:{{password}}@" + pg.Addr + "/" + DatabaseName + "?sslmode=disable",
			"username":       pgSuperuser, "password": password,
			"allowed_roles": DatabaseRole, "verify_connection": true,
		}},
		{"database/roles/" + DatabaseRole, map[string]any{
			"db_name": DatabaseName,
			"creation_statements": []string{
				`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
				`GRANT SELECT ON orders TO "{{name}}"`,
			},
			"default_ttl": "30m", "max_ttl": "1h",
		}},
	} {
		if _, err := s.vault.Logical().WriteWithContext(ctx, w.path, w.data); err != nil {
			return fmt.Errorf("dev: writing Vault's %s: %w", w.path, err)
		}
	}
	return nil
}

// pgEnv is PostgreSQL's environment: the caller's PATH, no PG* settings
// that would point it elsewhere.
func pgEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
}
