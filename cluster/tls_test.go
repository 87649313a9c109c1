package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// testPKI is a CA for tests and the certificates it signs for 127.0.0.1,
// each named like `quorumq tls cert --name` names a server's.
type testPKI struct {
	pool  *x509.CertPool
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "quorumq test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{pool: pool, ca: ca, caKey: caKey}
}

// cert is a certificate for 127.0.0.1 with Common Name name.
func (p *testPKI) cert(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// secure gives node cfg TLS on its API and mutual TLS on its Raft port,
// with a certificate named by its node ID.
func (p *testPKI) secure(t testing.TB, cfg *Config) {
	certs := []tls.Certificate{p.cert(t, cfg.NodeID)}
	cfg.APIServerTLS = &tls.Config{Certificates: certs}
	cfg.APIClientTLS = &tls.Config{RootCAs: p.pool}
	cfg.RaftServerTLS = &tls.Config{Certificates: certs, ClientCAs: p.pool, ClientAuth: tls.RequireAndVerifyClientCert}
	cfg.RaftClientTLS = &tls.Config{Certificates: certs, RootCAs: p.pool}
}

func TestTLSAndToken(t *testing.T) {
	pki := newTestPKI(t)
	pool := pki.pool
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		pki.secure(t, cfg)
		cfg.AuthToken = "s3cret-admin-token-0123"
	})
	leader := c.Leader(t)
	dial := func(token string) quorumqpb.QueueClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool}))}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
		}
		conn, err := grpc.NewClient(leader.APIAddr(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return quorumqpb.NewQueueClient(conn)
	}
	req := &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("x")}}}
	if _, err := dial("s3cret-admin-token-0123").Enqueue(ctxT(t, 10*time.Second), req); err != nil {
		t.Fatalf("enqueue over TLS with the token: %v", err)
	}
	c.WaitReplicated(t) // replicated over TLS Raft
	for _, tok := range []string{"", "wrong"} {
		if _, err := dial(tok).Enqueue(ctxT(t, 10*time.Second), req); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("enqueue with token %q: %v, want Unauthenticated", tok, err)
		}
	}

	// Status fans out to every node over TLS with the token.
	conn, err := grpc.NewClient(leader.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})), grpc.WithPerRPCCredentials(bearer("s3cret-admin-token-0123")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := quorumqpb.NewClusterClient(conn).Status(ctxT(t, 10*time.Second), &quorumqpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetNodes()) != 3 {
		t.Fatalf("status lists %d nodes, want 3", len(st.GetNodes()))
	}
	for _, n := range st.GetNodes() {
		if n.GetError() != "" || n.GetState() == "" {
			t.Fatalf("status of %s: state %q error %q", n.GetId(), n.GetState(), n.GetError())
		}
	}
}
