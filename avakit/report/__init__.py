"""A run folder -> report.html and PNGs, no torch: `splits` reads, `*_plots` draw, `html` lays out,
`build` ties them together.
"""
