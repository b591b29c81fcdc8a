"""binlogs"""
