package main

import (
	"fmt"
	"slices"
	"strings"
)

// Exit codes, named so that scripts and systemd can tell failures apart.
// 2 is left to Go's own panics.
const (
	exitOK          = 0
	exitFailure     = 1  // anything not listed below
	exitUsage       = 3  // bad flags, arguments or config file
	exitMountPoint  = 10 // missing, not a directory, or already served by a live midfs
	exitJoinRefused = 11 // the authority refused the token or the AWS identity
	exitCAPin       = 12 // the authority's CA does not match --ca-pin
	exitUnreachable = 13 // the authority could not be reached within --join-timeout
	exitFUSE        = 14 // the kernel refused the mount
	exitAuthority   = 15 // the authority could not start or its admin socket is unusable
)

// exitCodes is the one list of what each code means: the commands' help
// and the README's table are made from it or checked against it.
var exitCodes = []struct {
	code          int
	short, detail string
}{
	{exitOK, "ok", "success"},
	{exitFailure, "failure", "any other failure"},
	{exitUsage, "usage", "bad flags, arguments or config file"},
	{exitMountPoint, "mountpoint", "mountpoint missing, not a directory, or already served by a live midfs"},
	{exitJoinRefused, "join refused", "the authority refused the join (token, AWS identity)"},
	{exitCAPin, "CA pin", "the authority's CA does not match `--ca-pin`"},
	{exitUnreachable, "unreachable", "the authority was unreachable for `--join-timeout`"},
	{exitFUSE, "FUSE", "the kernel refused the FUSE mount"},
	{exitAuthority, "authority", "the authority could not start, or its admin socket is unusable"},
}

// exitHelp is the "Exit codes: ..." line of a command's help, for codes.
func exitHelp(codes ...int) string {
	var parts []string
	for _, e := range exitCodes {
		if slices.Contains(codes, e.code) {
			parts = append(parts, fmt.Sprintf("%d %s", e.code, e.short))
		}
	}
	return "Exit codes: " + strings.Join(parts, ", ") + "."
}

// exitError is an error with the exit code it should end the process with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// fail wraps err with an exit code; a nil err stays nil.
func fail(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// failf is fail with a formatted one-line message.
func failf(code int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return &exitError{code: code, err: fmt.Errorf("%s", strings.ReplaceAll(msg, "\n", " "))}
}
