package client

import (
	"context"
	"net/http"

	"github.com/sigil-net/sigil/agent/apitypes"
)

// Services returns the services the agent's socket load-balancer has
// installed; CodeUnavailable when it does not load-balance services.
func (c *Client) Services(ctx context.Context) ([]apitypes.Service, error) {
	var l apitypes.ServiceList
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &l)
	return l.Services, err
}
