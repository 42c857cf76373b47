// Package systemd holds the systemd unit that runs fhirsync on a single VM
// (fhirsync.service) and no Go code: its tests check the unit's hardening
// and, where systemd-analyze is installed, verify it and score its exposure.
package systemd
