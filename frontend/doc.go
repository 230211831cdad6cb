// Package frontend is the Blockfile Dockerfile frontend: it wraps BuildKit's upstream
// Dockerfile frontend and adds the IMPORT instruction.
package frontend
