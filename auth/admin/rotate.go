package admin

import (
	"context"
	"time"

	"github.com/midfs/midfs/auth/policy"
)

// RotateRequest moves the rotation of one kind of CA (`midfs auth rotate`):
// without Manual it starts an automatic rotation over GracePeriod; with
// Manual it moves to Phase.
type RotateRequest struct {
	Type        string        `json:"type"` // user, host or db
	GracePeriod time.Duration `json:"grace_period,omitempty"`
	Manual      bool          `json:"manual,omitempty"`
	Phase       string        `json:"phase,omitempty"`
}

// Rotate moves a CA's rotation and returns where it is now.
func (c *Client) Rotate(ctx context.Context, req RotateRequest) (*policy.CAResource, error) {
	var ca policy.CAResource
	return &ca, c.call(ctx, "POST", "/v1/rotate", req, &ca)
}
