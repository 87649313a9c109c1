package raftnet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testCA makes a CA and a certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// echo accepts one connection on l and echoes what it reads.
func echo(l *Layer) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(c, c)
}

func roundTrip(t *testing.T, from, to *Layer) error {
	t.Helper()
	go echo(to)
	c, err := from.Dial(raft.ServerAddress(to.Addr().String()), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

func TestPlainTCP(t *testing.T) {
	a, err := Listen(Config{Bind: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(Config{Bind: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := roundTrip(t, a, b); err != nil {
		t.Fatal(err)
	}
}

func TestMutualTLS(t *testing.T) {
	pool, cert := testCA(t)
	cfg := Config{
		Bind:      "127.0.0.1:0",
		ServerTLS: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13},
		ClientTLS: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13},
	}
	a, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := roundTrip(t, a, b); err != nil {
		t.Fatalf("TLS round trip: %v", err)
	}

	// A peer without a client certificate is refused.
	noCert := cfg
	noCert.ClientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	c, err := Listen(noCert)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(t, c, b); err == nil {
		t.Fatal("a peer without a client certificate got through")
	}

	// A plain-TCP peer cannot talk to a TLS listener.
	plain, err := Listen(Config{Bind: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := roundTrip(t, plain, b); err == nil {
		t.Fatal("a plain-TCP peer got an echo from a TLS listener")
	}
}

func TestAdvertise(t *testing.T) {
	if _, err := Listen(Config{Bind: "0.0.0.0:0"}); !errors.Is(err, ErrNoAdvertise) {
		t.Fatalf("unspecified bind without advertise: %v, want ErrNoAdvertise", err)
	}
	l, err := Listen(Config{Bind: "0.0.0.0:0", Advertise: "10.1.2.3:7201"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.Addr().String(); got != "10.1.2.3:7201" {
		t.Fatalf("Addr() = %s, want the advertised 10.1.2.3:7201", got)
	}
	if _, err := Listen(Config{Bind: "127.0.0.1:0", ServerTLS: &tls.Config{}}); err == nil {
		t.Fatal("server TLS without client TLS accepted")
	}
}
