"""The lab: emulated cluster components that let the real agent run on one machine."""
