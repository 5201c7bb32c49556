package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
)

// Cleanup is a stack of undo steps, run last-in first-out exactly once,
// whether the benchmark finished, failed or was interrupted.
type Cleanup struct {
	mu    sync.Mutex
	steps []cleanupStep
	log   io.Writer
}

type cleanupStep struct {
	what string
	fn   func() error
}

// NewCleanup returns an empty stack that reports failed steps on log.
func NewCleanup(log io.Writer) *Cleanup {
	if log == nil {
		log = io.Discard
	}
	return &Cleanup{log: log}
}

// Add pushes an undo step; what names it in error reports.
func (c *Cleanup) Add(what string, fn func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, cleanupStep{what, fn})
}

// Run runs every step pushed so far, newest first, and empties the stack.
// It keeps going past failures and returns them joined.
func (c *Cleanup) Run() error {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := safeCall(steps[i].fn); err != nil {
			fmt.Fprintf(c.log, "cleanup: %s: %v\n", steps[i].what, err)
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].what, err))
		}
	}
	return errors.Join(errs...)
}

func safeCall(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return fn()
}

// checkHost reports what stops a benchmark from running here: it needs root
// (network namespaces, BPF) and the given commands.
func checkHost(bins ...string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, BPF)")
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			return err
		}
	}
	return nil
}
