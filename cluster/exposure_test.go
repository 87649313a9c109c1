package cluster

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quorumq/quorumq/transport/raftnet"
)

// A host that opens thousands of connections to a node's Raft port and
// sends nothing holds at most MaxConnsPerIP of them, each only until the
// handshake timeout, and the cluster keeps taking writes meanwhile.
func TestIdleRaftConnectionsAreCappedAndClosed(t *testing.T) {
	const attackers = 5000
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.RaftConnLimits = raftnet.Limits{HandshakeTimeout: 3 * time.Second}
	})
	leader := c.Leader(t)
	li := c.Index(leader)

	// 127.0.0.2 plays a host outside the cluster (the nodes use 127.0.0.1).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	conns := make([]net.Conn, 0, attackers)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	start := time.Now()
	for i := range attackers {
		conn, err := d.Dial("tcp", leader.RaftAddr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, conn)
	}
	t.Logf("%d idle connections opened in %v", attackers, time.Since(start).Round(time.Millisecond))

	for i := range 20 {
		enqueue(t, c, li, "q", fmt.Sprintf("m%d", i))
	}

	deadline := time.Now().Add(3*time.Second + 10*time.Second)
	open := 0
	for _, conn := range conns {
		conn.SetReadDeadline(deadline)
		if _, err := io.ReadAll(conn); err != nil {
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d of %d idle connections still open %v after they were made (handshake timeout 3 s)",
			open, attackers, time.Since(start).Round(time.Millisecond))
	}
	refused := testutil.ToFloat64(leader.metrics.raftConnsRefused.WithLabelValues("max-conns-per-ip"))
	if want := float64(attackers - raftnet.DefaultMaxConnsPerIP); refused < want {
		t.Fatalf("quorumq_raft_connections_refused_total{reason=max-conns-per-ip} = %v, want at least %v", refused, want)
	}
	enqueue(t, c, li, "q", "after")
	c.WaitReplicated(t)
}
