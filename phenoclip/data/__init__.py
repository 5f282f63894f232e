"""phenoclip.data"""
