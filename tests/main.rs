mod stack_errors;
