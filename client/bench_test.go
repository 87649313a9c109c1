package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// Benchmarks against a real three-node cluster on loopback. They report
// messages per second; run them short, e.g.
//
//	go test ./client -run '^$' -bench . -benchtime 20000x
func benchClient(b *testing.B, opts ...client.Option) *client.Client {
	tc := cluster.StartTestCluster(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.New(ctx, tc.Addrs(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

var body = make([]byte, 100)

// BenchmarkSendSequential: one Send at a time, one message per Raft entry.
func BenchmarkSendSequential(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Send(ctx, "bench-send", body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSendConcurrent: 32 goroutines per GOMAXPROCS calling Send; the
// client gathers their messages into one Enqueue RPC per round.
func BenchmarkSendConcurrent(b *testing.B) { benchSendConcurrent(b) }

// BenchmarkSendConcurrentUngathered: as BenchmarkSendConcurrent with one
// RPC and one Raft entry per Send (Raft still batches the entries into
// one disk write).
func BenchmarkSendConcurrentUngathered(b *testing.B) {
	benchSendConcurrent(b, client.WithSendGathering(false))
}

func benchSendConcurrent(b *testing.B, opts ...client.Option) {
	c := benchClient(b, opts...)
	ctx := context.Background()
	b.ResetTimer()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Send(ctx, "bench-concurrent", body); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkProducer: SendAsync from one goroutine; the Producer gathers
// messages into batches of up to 1000, up to four on the wire at once
// (the default; order kept, see WithBatchesInFlight).
func BenchmarkProducer(b *testing.B) { benchProducer(b) }

// BenchmarkProducer1InFlight: as BenchmarkProducer with one batch on the
// wire at a time, so the gain of keeping several in flight is the ratio
// of the two in one run.
func BenchmarkProducer1InFlight(b *testing.B) { benchProducer(b, client.WithBatchesInFlight(1)) }

func benchProducer(b *testing.B, opts ...client.ProducerOption) {
	c := benchClient(b)
	ctx := context.Background()
	p := c.NewProducer(opts...)
	futs := make([]*client.SendFuture, 0, b.N)
	b.ResetTimer()
	for range b.N {
		futs = append(futs, p.SendAsync(ctx, "bench-producer", client.OutMessage{Body: body}))
	}
	for _, f := range futs {
		if _, err := f.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
