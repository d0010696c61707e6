//! Corral's compute service (work in progress).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("corral-compute is not implemented yet")
}
