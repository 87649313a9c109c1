// Package console is the web console a node serves on its admin HTTP
// listener under /console/: a queues page (depths, oldest ready age, send
// and ack rates), a queue page (settings, peek, fate lookup, purge,
// redrive, test send) and a cluster page (Raft role, term and indices,
// gossip state, clock offset per node).
//
// Decisions:
//
//   - The console is a client of the node's own gRPC API (package client),
//     called with the operator's token. Auth scopes, limits, validation and
//     leader forwarding are therefore exactly those of any other client:
//     the console adds no second path into the state machine, and a
//     read-only token is refused an action by the API even if a console bug
//     offered the button.
//   - Pages are html/template rendered on the server, and the templates,
//     CSS and script are embedded in the binary: no build step, no npm,
//     and every page works without JavaScript. A few lines of JavaScript refresh the live part of a page
//     every few seconds (it fetches the same URL and swaps one element) and
//     draw the rate charts as inline SVG from the counters in the page.
//   - When the cluster has tokens, the console asks for one and keeps it
//     in a server-side session; the browser holds only a random session ID
//     in an HttpOnly, SameSite=Strict cookie. The console also checks the
//     token's scope itself, to hide the buttons a token may not use and to
//     refuse such an action before any call.
//   - Every POST carries the session's CSRF token in a form field, compared
//     in constant time, and a cross-origin Origin header is refused. Each
//     action first renders a confirmation page naming what it will do; only
//     the confirmed POST acts.
//
// When the node's API has TLS, which tokens require, the admin listener
// serves HTTPS with the API's certificate, and the session cookie is
// Secure: a token typed into the login form never crosses the network in
// the clear.
package console
