// Package image exports whole images into the store (standard image plus blocked
// form) and hydrates them back into byte-identical standard images.
package image
