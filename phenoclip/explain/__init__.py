"""phenoclip.explain"""
