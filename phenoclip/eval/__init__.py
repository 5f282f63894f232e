"""phenoclip.eval"""
