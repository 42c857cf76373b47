// Package container holds the files that build the fhirsync container image
// (the Dockerfile at the repository root, Containerfile.scratch and the build
// scripts here) and no Go code: its tests check the Dockerfile and, where
// podman is installed, build the image without a registry and run it.
package container
