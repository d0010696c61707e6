//! Corral's compute service (work in progress).
