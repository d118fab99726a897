package edge

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// LimitPerIP wraps lis so that at most limit connections from one IP
// address are open at once: one past it is closed as soon as it is
// accepted, before its TLS handshake, so a single host cannot make atfd
// hold connections without bound (docs/security.md). The refusal is
// logged once each time an address reaches its limit, not per connection.
// Connections that are not TCP (a Unix socket) are not counted.
func LimitPerIP(lis net.Listener, limit int, log *slog.Logger) net.Listener {
	return &perIPListener{Listener: lis, limit: limit, log: log, open: map[netip.Addr]int{}, full: map[netip.Addr]bool{}}
}

type perIPListener struct {
	net.Listener
	limit int
	log   *slog.Logger

	mu   sync.Mutex
	open map[netip.Addr]int
	// full marks the addresses whose refusal was logged since they last
	// were under the limit.
	full map[netip.Addr]bool
}

// Accept returns the next connection within its address's limit.
func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tcp, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok {
			return c, nil
		}
		ip := tcp.AddrPort().Addr().Unmap()
		if l.admit(ip) {
			return &countedConn{Conn: c, release: func() { l.release(ip) }}, nil
		}
		_ = c.Close() // nothing was read from it
	}
}

// admit counts a connection from ip, unless ip is at its limit.
func (l *perIPListener) admit(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip] < l.limit {
		l.open[ip]++
		return true
	}
	if !l.full[ip] {
		l.full[ip] = true
		l.log.Warn("connections refused: the address holds as many open connections as limits.max_connections_per_ip allows",
			slog.String(LogPeer, ip.String()), slog.Int(LogCount, l.limit))
	}
	return false
}

// release uncounts a closed connection from ip.
func (l *perIPListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
	delete(l.full, ip)
}

// countedConn releases its place when it is first closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
