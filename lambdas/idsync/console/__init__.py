"""What the `idsync` command prints: consoles, plain-text formatting, log views, operator audit, the HTML report."""
