package wire

import (
	"google.golang.org/grpc/mem"
)

// BufferPool is the pool gRPC takes its message buffers from, on the
// server and in the client. gRPC's default pool has tiers of 256 B, 4 KiB,
// 16 KiB, 32 KiB and 1 MiB, and it zeroes a whole buffer when it hands it
// out, so a 33 KiB receive response (100 messages of 300 bytes) clears
// 1 MiB on each side, on every call. A tier at every power of two from
// 256 B to 16 MiB clears at most twice what a message needs.
var BufferPool = func() mem.BufferPool {
	exponents := make([]uint8, 0, 17)
	for e := uint8(8); e <= 24; e++ {
		exponents = append(exponents, e)
	}
	p, err := mem.NewBinaryTieredBufferPool(exponents...)
	if err != nil {
		panic("wire: buffer pool: " + err.Error())
	}
	return p
}()
