// Package client is the Go client of the sigil-agent local API.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
)

// ErrUnreachable wraps failures to reach the agent at all.
var ErrUnreachable = errors.New("sigil agent unreachable")

// APIError is a non-2xx answer of the agent.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("sigil agent: %s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// IsCode reports whether err is an APIError with code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// Client talks to one agent socket.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the agent at socket; timeout bounds each call.
func New(socket string, timeout time.Duration) *Client {
	if socket == "" {
		socket = apitypes.DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:      2,
		DisableKeepAlives: false,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sigil-agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s (is sigil-agent running on this node?): %v", ErrUnreachable, c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%w: reading answer from %s: %v", ErrUnreachable, c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var er apitypes.ErrorResponse
		if json.Unmarshal(data, &er) == nil && er.Error.Code != "" {
			return &APIError{Status: resp.StatusCode, Code: er.Error.Code, Message: er.Error.Message}
		}
		return &APIError{Status: resp.StatusCode, Code: apitypes.CodeInternal, Message: string(bytes.TrimSpace(data))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("sigil agent: decoding answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func epPath(containerID, ifName string) string {
	return "/v1/endpoints/" + url.PathEscape(containerID) + "/" + url.PathEscape(ifName)
}

// Health returns the agent's health; a not-ready agent answers with an
// APIError of code not_ready.
func (c *Client) Health(ctx context.Context) (apitypes.Health, error) {
	var h apitypes.Health
	err := c.do(ctx, http.MethodGet, "/v1/healthz", nil, &h)
	return h, err
}

// PutEndpoint creates or confirms an endpoint.
func (c *Client) PutEndpoint(ctx context.Context, req apitypes.EndpointRequest) (apitypes.Endpoint, error) {
	var ep apitypes.Endpoint
	err := c.do(ctx, http.MethodPut, epPath(req.ContainerID, req.IfName), req, &ep)
	return ep, err
}

// GetEndpoint returns an endpoint; an unknown one gives code not_found.
func (c *Client) GetEndpoint(ctx context.Context, containerID, ifName string) (apitypes.Endpoint, error) {
	var ep apitypes.Endpoint
	err := c.do(ctx, http.MethodGet, epPath(containerID, ifName), nil, &ep)
	return ep, err
}

// DeleteEndpoint removes an endpoint and releases its addresses; deleting
// an unknown endpoint succeeds with Found=false.
func (c *Client) DeleteEndpoint(ctx context.Context, containerID, ifName string) (apitypes.DeleteResult, error) {
	var r apitypes.DeleteResult
	err := c.do(ctx, http.MethodDelete, epPath(containerID, ifName), nil, &r)
	return r, err
}

// ListEndpoints lists every endpoint.
func (c *Client) ListEndpoints(ctx context.Context) ([]apitypes.Endpoint, error) {
	var l apitypes.EndpointList
	err := c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &l)
	return l.Endpoints, err
}

// GC removes every endpoint and allocation not in valid.
func (c *Client) GC(ctx context.Context, valid []apitypes.Attachment) (apitypes.GCResult, error) {
	var r apitypes.GCResult
	if valid == nil {
		valid = []apitypes.Attachment{}
	}
	err := c.do(ctx, http.MethodPost, "/v1/gc", apitypes.GCRequest{ValidAttachments: valid}, &r)
	return r, err
}

// ListIPAM lists the IPAM allocations.
func (c *Client) ListIPAM(ctx context.Context) ([]apitypes.IPAMAllocation, error) {
	var l apitypes.IPAMList
	err := c.do(ctx, http.MethodGet, "/v1/ipam", nil, &l)
	return l.Allocations, err
}
