package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogFor returns an hclog.Logger (what raft wants) whose records go to
// logger, so raft's logs land in the node's one slog stream with the same
// fields and levels instead of a second format on stderr.
func hclogFor(logger *slog.Logger, name string) hclog.Logger {
	level := hclog.Info
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		level = hclog.Debug
	}
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Output: io.Discard, Level: level})
	il.RegisterSink(hclogSink{logger: logger})
	return il
}

type hclogSink struct{ logger *slog.Logger }

// Accept receives every record of the intercept logger; the slog handler
// decides by level what is written.
func (s hclogSink) Accept(name string, level hclog.Level, msg string, args ...interface{}) {
	lvl := slogLevel(level)
	if lvl == slog.LevelWarn && msg == "heartbeat timeout reached, starting election" && firstElection(args) {
		lvl = slog.LevelInfo // the first election of a new cluster is routine, not a warning
	}
	if lvl == slog.LevelWarn && msg == "found temporary snapshot" {
		// A listing while a snapshot is being written sees it; one that a
		// stop left is removed and reported at start
		// (removeUnfinishedSnapshots).
		lvl = slog.LevelDebug
	}
	ctx := context.Background()
	if !s.logger.Enabled(ctx, lvl) {
		return
	}
	attrs := make([]any, 0, len(args)+2)
	attrs = append(attrs, "component", name)
	for _, a := range args {
		// hclog.Fmt defers formatting to the logger; do it here.
		if f, ok := a.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				a = fmt.Sprintf(format, f[1:]...)
			}
		}
		attrs = append(attrs, a)
	}
	s.logger.Log(ctx, lvl, msg, attrs...)
}

// firstElection reports whether raft's key/value args say no leader was
// ever known (last-leader-id is empty).
func firstElection(args []interface{}) bool {
	for i := 0; i+1 < len(args); i += 2 {
		if args[i] == "last-leader-id" {
			return fmt.Sprint(args[i+1]) == ""
		}
	}
	return false
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// stdlogFor returns a *log.Logger (what memberlist wants) that parses the
// "[LEVEL] component: message" lines memberlist writes into slog records.
func stdlogFor(logger *slog.Logger, component string) *log.Logger {
	return log.New(levelWriter{logger: logger, component: component}, "", 0)
}

type levelWriter struct {
	logger    *slog.Logger
	component string
}

func (w levelWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(bytes.TrimRight(p, "\n")))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[TRACE]": slog.LevelDebug, "[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[ERROR]": slog.LevelError,
	} {
		if strings.HasPrefix(line, prefix) {
			lvl = l
			line = strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	line = strings.TrimPrefix(line, w.component+": ")
	if lvl > slog.LevelDebug && strings.Contains(line, "use of closed network connection") {
		lvl = slog.LevelDebug // memberlist's goroutines racing its own shutdown
	}
	w.logger.Log(context.Background(), lvl, line, "component", w.component)
	return len(p), nil
}
