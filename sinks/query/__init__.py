"""What the query commands share: time and rank specs, tables, the console alert line, plots."""
