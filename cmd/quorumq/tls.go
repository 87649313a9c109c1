package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(tlsCmd()) }

// tlsCmd makes a development CA and certificates signed by it. Every
// certificate is good for both server and client authentication, because a
// quorumq server is both: it serves the API and Raft, and dials the other
// servers' Raft ports with its certificate (mutual TLS).
func tlsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Make a development CA and server certificates (ECDSA P-256)",
		Long: `Make a development CA and server certificates (ECDSA P-256).

  quorumq tls ca   --dir certs                       # certs/ca.pem, certs/ca-key.pem
  quorumq tls cert --dir certs --name n1 --hosts n1.example,10.0.0.1
                                                    # certs/n1.pem, certs/n1-key.pem

Then: quorumq server --tls-cert certs/n1.pem --tls-key certs/n1-key.pem
--tls-ca certs/ca.pem ..., and clients use --tls-ca certs/ca.pem. For
production use your organisation's CA; keep ca-key.pem offline.`,
	}
	var dir string
	var days int
	ca := &cobra.Command{
		Use:   "ca",
		Short: "Create ca.pem and ca-key.pem in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := makeCA(dir, days); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
			return nil
		},
	}
	ca.Flags().StringVar(&dir, "dir", ".", "directory for ca.pem and ca-key.pem (created if missing)")
	ca.Flags().IntVar(&days, "days", 3650, "validity in days")

	var cdir, name string
	var hosts []string
	var cdays int
	cert := &cobra.Command{
		Use:   "cert",
		Short: "Create NAME.pem and NAME-key.pem in --dir, signed by the CA there",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := makeCert(cdir, name, cleanList(hosts), cdays); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", filepath.Join(cdir, name+".pem"), filepath.Join(cdir, name+"-key.pem"))
			return nil
		},
	}
	cert.Flags().StringVar(&cdir, "dir", ".", "directory holding ca.pem and ca-key.pem; the certificate is written there")
	cert.Flags().StringVar(&name, "name", "", "file name and common name of the certificate (required)")
	cert.Flags().StringSliceVar(&hosts, "hosts", nil, "comma-separated DNS names and IPs the certificate is valid for (required: every address clients and servers dial)")
	cert.Flags().IntVar(&cdays, "days", 825, "validity in days")
	cmd.AddCommand(ca, cert)
	return cmd
}

func makeCA(dir string, days int) error {
	if days <= 0 {
		return fmt.Errorf("--days %d: want at least 1", days)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "quorumq development CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(0, 0, days),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(certPath, keyPath, der, key)
}

func makeCert(dir, name string, hosts []string, days int) error {
	if name == "" {
		return errors.New("--name is required (the certificate's file name and common name)")
	}
	if filepath.Base(name) != name || name == "ca" {
		return fmt.Errorf("--name %q: want a plain file name other than ca", name)
	}
	if len(hosts) == 0 {
		return errors.New("--hosts is required: list every DNS name and IP address clients and servers use to reach this server")
	}
	if days <= 0 {
		return fmt.Errorf("--days %d: want at least 1", days)
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return fmt.Errorf("load the CA from %s (quorumq tls ca --dir %s makes one): %w", dir, dir, err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(0, 0, days),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return err
	}
	return writePair(certPath, keyPath, der, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; not overwriting it (remove it first)", p)
		}
	}
	return nil
}

// writePair writes the certificate (0644) and its key (0600).
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
