package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/sigil-net/sigil/agent/apitypes"
)

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (apitypes.Status, error) {
	var s apitypes.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Identities lists the identities the agent knows.
func (c *Client) Identities(ctx context.Context) ([]apitypes.Identity, error) {
	var l apitypes.IdentityList
	err := c.do(ctx, http.MethodGet, "/v1/identities", nil, &l)
	return l.Identities, err
}

// Identity returns one identity; an unknown one gives code not_found.
func (c *Client) Identity(ctx context.Context, id uint32) (apitypes.Identity, error) {
	var it apitypes.Identity
	err := c.do(ctx, http.MethodGet, "/v1/identities/"+strconv.FormatUint(uint64(id), 10), nil, &it)
	return it, err
}

// Policies lists the policies in force on the node.
func (c *Client) Policies(ctx context.Context) ([]apitypes.Policy, error) {
	var l apitypes.PolicyList
	err := c.do(ctx, http.MethodGet, "/v1/policies", nil, &l)
	return l.Policies, err
}

// Selectors lists the peer selectors in use and the identities they select.
func (c *Client) Selectors(ctx context.Context) ([]apitypes.Selector, error) {
	var l apitypes.SelectorList
	err := c.do(ctx, http.MethodGet, "/v1/selectors", nil, &l)
	return l.Selectors, err
}

// Explain asks why a new flow from one peer (namespace/pod or IP) to
// another is allowed or denied.
func (c *Client) Explain(ctx context.Context, from, to, protocol string, port uint16) (apitypes.Explanation, error) {
	v := url.Values{"from": {from}, "to": {to}, "protocol": {protocol}, "port": {strconv.Itoa(int(port))}}
	var x apitypes.Explanation
	err := c.do(ctx, http.MethodGet, "/v1/policy/explain?"+v.Encode(), nil, &x)
	return x, err
}

// Flows streams flow records for query (the query string of GET /v1/flows,
// see flows.Query.Values) and calls fn for each until the stream ends, ctx
// is done, or fn returns an error. The stream has no timeout.
func (c *Client) Flows(ctx context.Context, query url.Values, fn func(apitypes.FlowRecord) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sigil-agent/v1/flows?"+query.Encode(), nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: c.hc.Transport}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%w at %s (is sigil-agent running on this node?): %v", ErrUnreachable, c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var er apitypes.ErrorResponse
		if json.Unmarshal(data, &er) == nil && er.Error.Code != "" {
			return &APIError{Status: resp.StatusCode, Code: er.Error.Code, Message: er.Error.Message}
		}
		return &APIError{Status: resp.StatusCode, Code: apitypes.CodeInternal, Message: string(data)}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var rec apitypes.FlowRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("sigil agent: decoding flow record: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("sigil agent: flow stream: %w", err)
	}
	return nil
}
