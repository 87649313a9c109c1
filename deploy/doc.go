// Package deploy holds what runs quorumq outside a Go program: a Dockerfile
// for a FROM scratch image of the static binary (built on the host, so no
// image registry is needed), a docker-compose.yml for three servers, a
// systemd unit and an example config file. Its only Go code is the test
// that builds the image and runs the compose cluster for real (skipped
// where no Docker engine runs); see docs/operations.md.
package deploy
