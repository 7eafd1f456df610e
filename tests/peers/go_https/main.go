// A Go HTTPS server and client on Go's own crypto/tls (statically linked
// into this binary, no libssl), for the TLS plaintext tests: one binary
// for both roles, so the agent's attachment to it, made when it finds
// the server running, also covers the client started after.
//
//	go_https server ADDR PORT CERT KEY
//	go_https client ADDR PORT CA SNI PATH...
//
// The server answers `/status/N` with status N and anything else with
// 200, HTTP/1.1 only. The client sends the paths in order over one
// keep-alive connection, HTTP/1.1 (offered by ALPN), and prints each
// status on a line, or `error` when the request failed (an untrusted
// certificate, say), and goes on.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 6 {
		fmt.Fprintln(os.Stderr, "usage: go_https server ADDR PORT CERT KEY | client ADDR PORT CA SNI PATH...")
		os.Exit(2)
	}
	addr := net.JoinHostPort(os.Args[2], os.Args[3])
	switch os.Args[1] {
	case "server":
		serve(addr, os.Args[4], os.Args[5])
	case "client":
		request(addr, os.Args[4], os.Args[5], os.Args[6:])
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr, cert, key string) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusOK
		if strings.HasPrefix(r.URL.Path, "/status/") {
			if n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/")); err == nil {
				status = n
			}
		}
		body := fmt.Sprintf("%d %s\n", status, r.URL.Path)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
	server := &http.Server{
		Addr:    addr,
		Handler: handler,
		// An empty map turns HTTP/2 off: HTTP/1.1 only.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	if err := server.ServeTLS(listener, cert, key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func request(addr, caFile, sni string, paths []string) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "no certificate in", caFile)
		os.Exit(1)
	}
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: sni, NextProtos: []string{"http/1.1"}},
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxConnsPerHost:   1,
		ForceAttemptHTTP2: false,
	}
	client := &http.Client{Transport: transport}
	for _, path := range paths {
		response, err := client.Get("https://" + addr + path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			fmt.Println("error")
			continue
		}
		// Read to the end, so the connection is reused.
		io.Copy(io.Discard, response.Body)
		response.Body.Close()
		fmt.Println(response.StatusCode)
	}
}
