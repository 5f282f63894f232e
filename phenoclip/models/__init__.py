"""phenoclip.models"""
