"""phenoclip.bench"""
