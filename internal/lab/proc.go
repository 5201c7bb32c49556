package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a process the lab started.
type Process struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: with the PID it names the
	// process, so a recycled PID is never signalled.
	StartTime uint64 `json:"startTime"`
	NetNS     string `json:"netns,omitempty"`
	Log       string `json:"log"`
}

// startProcess starts argv in network namespace netns ("" = the root one),
// detached (its own session, so it outlives `sigil lab up`), with output to
// <dir>/logs/<name>.log, and records it in the state before returning.
func (s *State) startProcess(name, netns string, argv []string, env []string) (*Process, error) {
	logDir := filepath.Join(s.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if netns != "" {
		// nsenter without --fork joins the namespace and execs argv: the
		// PID is the program's own. Unlike `ip netns exec` it keeps /sys
		// (and so bpffs and cgroupfs) as they are.
		argv = append([]string{"nsenter", "--net=" + netnsPath(netns), "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	fmt.Fprintf(logf, "--- %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	st, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	p := Process{Name: name, PID: cmd.Process.Pid, StartTime: st, NetNS: netns, Log: logPath}
	if err := s.update(func(s *State) { s.Processes = append(s.Processes, p) }); err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	// Reap it when it exits while we still run, so it does not linger as a
	// zombie that alive() would count as running.
	go cmd.Wait()
	return &p, nil
}

// procStartTime reads the start time (clock ticks since boot) of pid.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: split
	// after its closing parenthesis.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	if fields[0] == "Z" {
		return 0, errExited
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

var errExited = errors.New("process exited")

// alive reports whether p is still the process the lab started.
func (p Process) alive() bool {
	st, err := procStartTime(p.PID)
	return err == nil && st == p.StartTime
}

// stop sends SIGTERM, waits up to grace, then SIGKILL; it never signals a
// PID that now belongs to another process.
func (p Process) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.PID, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.alive() {
		syscall.Kill(p.PID, syscall.SIGKILL)
		for i := 0; i < 100 && p.alive(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if p.alive() {
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.PID)
	}
	return nil
}

// logTail returns the last lines of a process's log, for error messages.
func logTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
