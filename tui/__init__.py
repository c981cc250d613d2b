"""The Textual dashboard over the banking example and its bus: ``banking dashboard``."""
