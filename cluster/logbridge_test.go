package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestLogBridges(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))

	h := hclogFor(logger, "raft")
	h.Warn("failed to contact", "server-id", "n2", "servers", hclog.Fmt("%+v", []string{"a", "b"}))
	h.Debug("hidden at info level")
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "", "last-leader-id", "")
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "127.0.0.1:1", "last-leader-id", "n1")
	hclogFor(logger, "snapshot").Warn("found temporary snapshot", "name", "2-9-1.tmp")
	ml := stdlogFor(logger, "memberlist")
	ml.Printf("[ERR] memberlist: Failed to send ping: boom")
	ml.Printf("[DEBUG] memberlist: Stream connection from=1.2.3.4")

	out := buf.String()
	for _, want := range []string{
		`level=WARN msg="failed to contact" component=raft server-id=n2 servers="[a b]"`,
		`level=ERROR msg="Failed to send ping: boom" component=memberlist`,
		`level=INFO msg="heartbeat timeout reached, starting election" component=raft last-leader-addr="" last-leader-id=""`,
		`level=WARN msg="heartbeat timeout reached, starting election" component=raft last-leader-addr=127.0.0.1:1 last-leader-id=n1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") || strings.Contains(out, "Stream connection") || strings.Contains(out, "found temporary snapshot") {
		t.Errorf("debug records written at info level:\n%s", out)
	}
}
