package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// BenchmarkRaftRound sends one Enqueue of batch messages at a time to a
// real three-node cluster and reports where a round goes, from raft's own
// timers: the leader's disk write (leader-store-ms), a follower's
// (follower-store-ms), the AppendEntries round trip that includes the
// latter (replicate-ms), and submission to commit (commit-ms). It is the
// floor under every synchronous workload: a caller waiting for its send
// waits for one round at least, whatever the batch.
//
//	go test ./cluster -run '^$' -bench RaftRound -benchtime 2000x
func BenchmarkRaftRound(b *testing.B) {
	for _, batch := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			sink := gometrics.NewInmemSink(time.Hour, time.Hour)
			cfg := gometrics.DefaultConfig("b")
			cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
			if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
				b.Fatal(err)
			}
			defer gometrics.NewGlobal(cfg, &gometrics.BlackholeSink{})
			tc := StartTestCluster(b, 3)
			qc := quorumqpb.NewQueueClient(tc.Conn(b, tc.Index(tc.Leader(b))))
			ctx := context.Background()
			if _, err := qc.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "round"}); err != nil {
				b.Fatal(err)
			}
			body := make([]byte, 256)
			msgs := make([]*fsmpb.Message, batch)
			sink.Data() // drop the start-up samples
			b.ResetTimer()
			for i := range b.N {
				for j := range msgs {
					msgs[j] = &fsmpb.Message{Body: body, DedupId: fmt.Sprintf("%d-%d", i, j)}
				}
				if _, err := qc.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "round", Messages: msgs}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/round")
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
			data := sink.Data()
			// mean averages the samples of name, over every label set.
			mean := func(name string) float64 {
				var sum float64
				var n int
				for _, iv := range data {
					for k, s := range iv.Samples {
						if k == name || strings.HasPrefix(k, name+";") {
							sum += s.Sum
							n += s.Count
						}
					}
				}
				if n == 0 {
					return 0
				}
				return sum / float64(n)
			}
			b.ReportMetric(mean("b.raft.leader.dispatchLog"), "leader-store-ms")
			b.ReportMetric(mean("b.raft.rpc.appendEntries.storeLogs"), "follower-store-ms")
			b.ReportMetric(mean("b.raft.replication.appendEntries.rpc"), "replicate-ms")
			b.ReportMetric(mean("b.raft.commitTime"), "commit-ms")
		})
	}
}
