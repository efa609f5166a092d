"""What the labels are worth: agreement between annotators, annotator reliability, prompt coverage."""
